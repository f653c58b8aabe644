"""Decoders: turn model outputs into token sequences."""
