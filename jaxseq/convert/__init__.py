"""Checkpoint conversion between jaxseq and other frameworks."""

from jaxseq.convert.hf_whisper import ConversionError, export_hf_whisper, load_hf_whisper

__all__ = ["ConversionError", "export_hf_whisper", "load_hf_whisper"]
