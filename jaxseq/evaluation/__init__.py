"""Evaluation of each kind of task: recognition (asr), synthesis (tts)."""
