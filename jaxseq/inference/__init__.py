"""What users call on audio and text with a trained workdir: transcribe, synthesize, classify."""
