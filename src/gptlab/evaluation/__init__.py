"""Evaluation (loss, perplexity, bits per character/byte), pictures of a model's insides, run reports."""
