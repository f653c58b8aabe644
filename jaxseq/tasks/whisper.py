"""Pretrained Whisper: the seq2seq model with OpenAI's tokenizer, prompt and 30-second inputs.

What differs from the from-scratch `seq2seq` family, as openai-whisper and transformers do it:
  * the tokenizer is the checkpoint's (`WORKDIR/tokenizer/`: tokenizer.json and the other
    tokenizer and generation files, copied by `jaxseq convert` and on to every workdir);
  * decoder inputs start with `<|startoftranscript|><|en|><|transcribe|><|notimestamps|>`
    (`model.language`, `model.task`; English-only checkpoints have just the first and last);
    the prompt is given, so training puts no weight on it;
  * decoding suppresses the generation config's `suppress_tokens` (plus every task and
    start token) at every step and its `begin_suppress_tokens` at the first;
  * every input is padded to 30 s (`2 * max_source_positions` frames) with log-mel silence and
    the encoder sees no mask: Whisper was trained only on such inputs;
  * dimensions come from the config (`jaxseq convert` copies them from config.json).
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxseq.config import Config
from jaxseq.errors import JaxseqError
from jaxseq.tasks.registry import register
from jaxseq.tasks.seq2seq import Seq2SeqTask, model_dims
from jaxseq.text.whisper_tokenizer import WhisperTokenizer

TOKENIZER_DIR = "tokenizer"  # in a workdir: the checkpoint's tokenizer and generation files
MULTILINGUAL_VOCAB = 51865  # openai-whisper: multilingual iff n_vocab >= 51865


def pad_like_whisper(
    features: jax.Array, lengths: jax.Array, num_frames: int
) -> tuple[jax.Array, jax.Array]:
    """Pads log-mel features to `num_frames` as if the audio had been zero-padded to 30 s.

    Whisper's log-mel of silence is its floor, `max(log_max - 8, -10)`, which after the
    `(x + 4) / 4` scaling is `max(feature_max - 2, -1.5)` with `feature_max` the utterance's
    largest feature; frames past `lengths` get that value.

    Args:
      features: float [batch, frames <= num_frames, n_mels]; lengths: int [batch].
    Returns:
      features [batch, num_frames, n_mels] and lengths int32 [batch], all `num_frames`.
    """
    batch, frames, _ = features.shape
    valid = (jnp.arange(frames)[None, :] < lengths[:, None])[:, :, None]  # [batch, frames, 1]
    peak = jnp.max(jnp.where(valid, features, -jnp.inf), axis=(1, 2), keepdims=True)
    silence = jnp.maximum(peak - 2.0, -1.5).astype(features.dtype)  # [batch, 1, 1]
    features = jnp.where(valid, features, silence)
    features = jnp.pad(features, ((0, 0), (0, num_frames - frames), (0, 0)))
    padded = jnp.arange(num_frames)[None, :, None] >= frames
    features = jnp.where(padded, silence, features)  # [batch, num_frames, n_mels]
    return features, jnp.full((batch,), num_frames, jnp.int32)


def tokenizer_dir(cfg: Config) -> Path:
    """Where a training run's Whisper tokenizer comes from: `model.tokenizer`, else the
    `tokenizer/` folder of `train.init_from`."""
    if cfg.model.tokenizer:
        return Path(cfg.model.tokenizer)
    if cfg.train.init_from:
        return Path(cfg.train.init_from) / TOKENIZER_DIR
    raise JaxseqError(
        "model.family=whisper uses a pretrained Whisper tokenizer: set train.init_from to a "
        "workdir written by `jaxseq convert`, or model.tokenizer to a folder holding "
        "Whisper's tokenizer.json"
    )


@register
class WhisperTask(Seq2SeqTask):
    """`Seq2SeqTask` with Whisper's tokenizer, prompt, token suppression and input padding."""

    family = "whisper"

    def __init__(self, cfg: Config, tokenizer: WhisperTokenizer, n_mels: int, source: Path):
        m = cfg.model
        if m.ctc_weight or m.scan_layers:
            raise JaxseqError(
                "model.ctc_weight and model.scan_layers are for models trained from scratch "
                "(model.family=seq2seq); Whisper checkpoints have no CTC head and one "
                "parameter set per layer"
            )
        if tokenizer.size > m.vocab_size:
            raise JaxseqError(
                f"the tokenizer in {source} has {tokenizer.size} tokens but model.vocab_size is "
                f"{m.vocab_size}; use the tokenizer of the checkpoint"
            )
        self.tokenizer_source = Path(source)
        # Whisper's bos is end-of-text (the id its config names), its decoder start <|sot|>.
        dims = model_dims(
            m,
            n_mels,
            vocab_size=m.vocab_size,
            max_target_positions=m.max_target_positions,
            pad_id=tokenizer.eot_id,
            start_id=tokenizer.sot_id,
            end_id=tokenizer.eot_id,
        )
        dims = dataclasses.replace(dims, bos_token_id=tokenizer.eot_id)
        self._prompt = tuple(
            tokenizer.prompt_ids(m.language, m.task)
            if m.vocab_size >= MULTILINGUAL_VOCAB
            else tokenizer.prompt_ids(None, None)
        )
        self._suppress = tokenizer.suppress_ids()
        self._begin_suppress = tokenizer.begin_suppress_ids()
        super().__init__(cfg, tokenizer, n_mels, dims)

    @classmethod
    def from_dataset(cls, cfg: Config, info: dict, workdir: Path | None = None) -> WhisperTask:
        """The task for training: the tokenizer from `tokenizer_dir(cfg)` (a file, so the
        same on every process)."""
        del workdir
        source = tokenizer_dir(cfg)
        return cls(
            cfg, WhisperTokenizer.from_folder(source), int(info["frontend"]["n_mels"]), source
        )

    @classmethod
    def from_config(cls, cfg: Config) -> WhisperTask:
        """The tokenizer of `tokenizer_dir(cfg)` when the config names one, else openai-whisper's
        special tokens for model.vocab_size (`WhisperTokenizer.placeholder`): the same prompt
        and shapes (for `jaxseq compile`)."""
        n_mels = cfg.prepare.frontend.n_mels
        if cfg.model.tokenizer or cfg.train.init_from:
            source = tokenizer_dir(cfg)
            return cls(cfg, WhisperTokenizer.from_folder(source), n_mels, source)
        placeholder = WhisperTokenizer.placeholder(cfg.model.vocab_size)
        return cls(cfg, placeholder, n_mels, Path(TOKENIZER_DIR))

    @classmethod
    def from_workdir(cls, cfg: Config, workdir: Path, n_mels: int) -> WhisperTask:
        source = Path(workdir) / TOKENIZER_DIR
        return cls(cfg, WhisperTokenizer.from_folder(source), n_mels, source)

    def save_tokenizer(self, workdir: Path) -> None:
        """Copies the checkpoint's tokenizer folder to `workdir/tokenizer/`."""
        target = Path(workdir) / TOKENIZER_DIR
        if target.resolve() != self.tokenizer_source.resolve():
            shutil.copytree(self.tokenizer_source, target, dirs_exist_ok=True)

    @property
    def prompt(self) -> tuple[int, ...]:
        return self._prompt

    @property
    def suppress_ids(self) -> tuple[int, ...]:
        return self._suppress

    @property
    def begin_suppress_ids(self) -> tuple[int, ...]:
        return self._begin_suppress

    def _source(self, features: jax.Array, lengths: jax.Array) -> tuple[jax.Array, jax.Array]:
        return pad_like_whisper(features, lengths, self.dims.num_frames)

    def hypothesis_ids(self, outputs: Any) -> list[np.ndarray]:
        """Each row's text tokens: the special ones (language, task, timestamps) dropped, as
        transformers' pipeline drops them before it merges the tokens of overlapping windows."""
        special = np.asarray(sorted(self.tokenizer.special_ids))
        return [ids[~np.isin(ids, special)] for ids in super().hypothesis_ids(outputs)]

    def ids_to_text(self, ids: np.ndarray) -> str:
        return self.tokenizer.decode(ids).strip()
