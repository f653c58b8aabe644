"""`jaxseq convert` and `jaxseq export`: HF Whisper folders ⇄ jaxseq workdirs.

A converted workdir is an ordinary one that `evaluate`, `transcribe`, `export` and
`train.init_from` read:

    WORKDIR/config.yaml          model.family=whisper with the checkpoint's dimensions
    WORKDIR/frontend.json        Whisper's log-mel settings (80 or 128 mel bins)
    WORKDIR/tokenizer/           the checkpoint's tokenizer and generation files, copied
    WORKDIR/checkpoints/0/       the weights (parameters only; no optimizer state)
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict
from pathlib import Path

from jaxseq.config import (
    FRONTEND_FILE,
    FrontendConfig,
    TextConfig,
    load_config,
    save_config,
    to_yaml,
)
from jaxseq.convert.hf_whisper import ConversionError, export_hf_whisper, load_hf_whisper
from jaxseq.tasks.whisper import TOKENIZER_DIR
from jaxseq.text.whisper_tokenizer import WhisperTokenizer

# Files of a transformers Whisper folder that travel with the weights (all optional but
# tokenizer.json, which jaxseq reads; the rest is kept so that `export` gives them back).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "normalizer.json",
    "preprocessor_config.json",
    "generation_config.json",
)
MAX_LABEL_LENGTH = 128  # default transcript length limit (tokens) of a converted workdir


def convert_to_workdir(
    hf_folder: str | Path, workdir: str | Path, *, language: str = "en", task: str = "transcribe"
) -> Path:
    """Imports a transformers `WhisperForConditionalGeneration` folder into a new workdir.

    Raises:
      ConversionError: naming the folder when a file is missing, the architecture is not
        Whisper or a tensor's shape is wrong (see `load_hf_whisper`), when its encoder and
        decoder differ in heads or MLP width (jaxseq's config has one of each), or when
        `workdir` already holds checkpoints.
    """
    from jaxseq.train.checkpoint import Checkpointer

    hf_folder, workdir = Path(hf_folder), Path(workdir)
    if (workdir / "checkpoints").exists():
        raise ConversionError(f"{workdir} already holds checkpoints; convert into a new workdir")
    params, dims = load_hf_whisper(hf_folder)
    for enc, dec in (("encoder_heads", "decoder_heads"), ("encoder_ffn_dim", "decoder_ffn_dim")):
        if getattr(dims, enc) != getattr(dims, dec):
            raise ConversionError(
                f"{hf_folder}: {enc}={getattr(dims, enc)} differs from {dec}="
                f"{getattr(dims, dec)}; jaxseq's Whisper config has one value for both"
            )
    tokenizer = WhisperTokenizer.from_folder(hf_folder)  # fails early, naming the folder
    if tokenizer.size > dims.vocab_size:
        raise ConversionError(
            f"{hf_folder}: tokenizer.json has {tokenizer.size} tokens but the model only "
            f"{dims.vocab_size}"
        )
    overrides = [
        "model.family=whisper",
        f"model.d_model={dims.d_model}",
        f"model.num_heads={dims.encoder_heads}",
        f"model.num_layers={dims.encoder_layers}",
        f"model.decoder_layers={dims.decoder_layers}",
        f"model.mlp_dim={dims.encoder_ffn_dim}",
        f"model.max_source_positions={dims.max_source_positions}",
        f"model.max_target_positions={dims.max_target_positions}",
        f"model.vocab_size={dims.vocab_size}",
        f"model.language={language}",
        f"model.task={task}",
        "model.dropout=0.0",
        "model.label_smoothing=0.0",
        f"prepare.frontend.n_mels={dims.n_mels}",
        f"data.buckets=[{dims.num_frames}]",
        f"data.max_label_length={min(MAX_LABEL_LENGTH, dims.max_target_positions - 4)}",
        "eval.decoder=beam",
        "eval.beam_size=5",
        "optim.freeze=[encoder/pos_embedding]",  # sinusoidal, as transformers freezes it
    ]
    cfg = load_config(None, overrides)
    workdir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, workdir / "config.yaml")
    frontend = {
        "frontend": asdict(FrontendConfig(n_mels=dims.n_mels)),
        "text": asdict(TextConfig()),
    }
    (workdir / FRONTEND_FILE).write_text(json.dumps(frontend, indent=2))
    (workdir / TOKENIZER_DIR).mkdir(exist_ok=True)
    for name in TOKENIZER_FILES:
        if (hf_folder / name).is_file():
            shutil.copy2(hf_folder / name, workdir / TOKENIZER_DIR / name)
    ckpt = Checkpointer(workdir / "checkpoints", cfg.train)
    ckpt.save_params(
        0, params, {"step": 0, "converted_from": str(hf_folder), "config": to_yaml(cfg)}
    )
    ckpt.wait()
    ckpt.close()
    logging.info("converted %s into %s", hf_folder, workdir)
    return workdir


def export_workdir(workdir: str | Path, out: str | Path, *, step: int | None = None) -> Path:
    """Writes a transformers Whisper folder (config.json, model.safetensors and the tokenizer
    files) from a seq2seq or whisper workdir's checkpoint (default: best, else latest)."""
    from jaxseq.evaluate import load_trained

    trained = load_trained(workdir, step=step)
    if trained.cfg.model.scan_layers:
        raise ConversionError(
            f"{workdir} was trained with model.scan_layers=true (stacked encoder layers); "
            "transformers' Whisper has one parameter set per layer"
        )
    if trained.cfg.model.family not in ("seq2seq", "whisper"):
        raise ConversionError(
            f"{workdir} holds a model.family={trained.cfg.model.family} model; only seq2seq and "
            "whisper workdirs export to transformers' WhisperForConditionalGeneration"
        )
    out = export_hf_whisper(trained.params, trained.task.dims, out)
    source = Path(workdir) / TOKENIZER_DIR
    if source.is_dir():  # whisper: the checkpoint's tokenizer and generation files
        for file in source.iterdir():
            shutil.copy2(file, out / file.name)
    else:  # seq2seq: jaxseq's own BPE tokenizer.json
        shutil.copy2(Path(workdir) / "tokenizer.json", out / "tokenizer.json")
    logging.info("exported %s step %d to %s", workdir, trained.step, out)
    return out
