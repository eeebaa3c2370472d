"""Interop: Hugging Face GPT-2 directories into gptlab checkpoints, and gptlab checkpoints out to them."""
