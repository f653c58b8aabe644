"""Data: sources, offline preparation into ArrayRecord, and the grain input pipeline."""
