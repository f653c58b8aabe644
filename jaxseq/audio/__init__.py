"""Audio: file loading, the Whisper-compatible log-mel frontend, SpecAugment, speech synthesis."""
