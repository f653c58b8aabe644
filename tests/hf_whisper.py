"""Small random transformers Whisper models for the reference tests and benchmarks, and
Whisper's real tokenizer for them (all built offline)."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers

# whisper-tiny's dimensions (openai/whisper-tiny), for benchmarks at a realistic size.
WHISPER_TINY = dict(
    vocab_size=51865,
    num_mel_bins=80,
    d_model=384,
    encoder_layers=4,
    decoder_layers=4,
    encoder_attention_heads=6,
    decoder_attention_heads=6,
    encoder_ffn_dim=1536,
    decoder_ffn_dim=1536,
    max_source_positions=1500,
    max_target_positions=448,
)


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


def write_whisper_tokenizer(folder: Path | str, encoding=None) -> Path:
    """Writes FOLDER/tokenizer.json: Whisper's multilingual tokenizer, derived from the
    tiktoken vocabulary openai-whisper ships (transformers' TikTokenConverter), wrapping
    encodings in <|startoftranscript|><|notimestamps|> ... <|endoftext|> as HF's files do.
    `encoding`: openai-whisper's tiktoken Encoding (default: its multilingual one)."""
    import whisper.tokenizer
    from tokenizers import processors
    from transformers.convert_slow_tokenizer import TikTokenConverter

    if encoding is None:
        encoding = whisper.tokenizer.get_tokenizer(multilingual=True).encoding
    ranks = Path(whisper.tokenizer.__file__).parent / "assets" / "multilingual.tiktoken"
    tok = TikTokenConverter(
        vocab_file=str(ranks),
        pattern=encoding._pat_str,
        extra_special_tokens=encoding._special_tokens,
    ).converted()
    # HF's Whisper files wrap encodings in <|startoftranscript|><|notimestamps|> ... <|endoftext|>:
    # encode must not add them.
    tok.post_processor = processors.TemplateProcessing(
        single="<|startoftranscript|> <|notimestamps|> $A <|endoftext|>",
        special_tokens=[
            (t, tok.token_to_id(t))
            for t in ["<|startoftranscript|>", "<|notimestamps|>", "<|endoftext|>"]
        ],
    )
    Path(folder).mkdir(parents=True, exist_ok=True)
    path = Path(folder) / "tokenizer.json"
    tok.save(str(path))
    return path
