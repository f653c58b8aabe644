"""Small random transformers Whisper models for the reference tests (built offline)."""

from __future__ import annotations

import torch
import transformers


def random_whisper(
    std: float, *, seed: int = 0, **config
) -> transformers.WhisperForConditionalGeneration:
    """A `WhisperForConditionalGeneration` with d_model 64, 2 + 2 layers, 4 heads, MLP 128 and
    80 mel bins unless `config` says otherwise, every weight redrawn N(0, std) (LayerNorm
    scales N(1, std)) so that a zero bias or unit scale copied to the wrong place shows."""
    defaults = dict(
        num_mel_bins=80,
        d_model=64,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
    )
    torch.manual_seed(seed)
    model = transformers.WhisperForConditionalGeneration(
        transformers.WhisperConfig(**{**defaults, **config})
    ).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(1.0 if "layer_norm.weight" in name else 0.0, std)
    return model
