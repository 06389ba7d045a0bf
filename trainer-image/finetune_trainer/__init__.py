"""The trainer: fine-tunes a causal language model as one FineTuneJob's pods describe it."""
