"""The data stage: sources -> documents -> split -> tokens on disk -> batches."""
