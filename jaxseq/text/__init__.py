"""Text: normalization policy and tokenizers."""
