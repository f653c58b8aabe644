"""Pretrained Whisper: the seq2seq model with OpenAI's tokenizer, prompt and 30-second inputs.

What differs from the from-scratch `seq2seq` family, as openai-whisper and transformers do it:
  * the tokenizer is the checkpoint's (`WORKDIR/tokenizer/`: tokenizer.json and the other
    tokenizer and generation files, copied by `jaxseq convert` and on to every workdir);
  * decoder inputs start with `<|startoftranscript|><|en|><|transcribe|><|notimestamps|>`
    (`model.language`, `model.task`; English-only checkpoints have just the first and last);
    the prompt is given, so training puts no weight on it. `model.language=auto` detects each
    recording's language when transcribing (`jaxseq.inference.language`) and decodes it with
    that language's prompt (`prompt_for`, a static option of `predict_fn`); training and
    evaluation, which need the transcripts' language, refuse it;
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
from jaxseq.decoding.timestamp_rules import TimestampRules
from jaxseq.errors import JaxseqError
from jaxseq.tasks.base import Batch, Metrics
from jaxseq.tasks.registry import register
from jaxseq.tasks.seq2seq import Seq2SeqTask, model_dims
from jaxseq.text.whisper_tokenizer import WhisperTokenizer

TOKENIZER_DIR = "tokenizer"  # in a workdir: the checkpoint's tokenizer and generation files
MULTILINGUAL_VOCAB = 51865  # openai-whisper: multilingual iff n_vocab >= 51865
TASKS = ("transcribe", "translate")
AUTO = "auto"  # model.language: detect each recording's language


def language_tokens(tokenizer: WhisperTokenizer) -> dict[str, int]:
    """{code: id} of the language tokens, in id order: the `<|xx|>` tokens between
    `<|startoftranscript|>` and `<|translate|>` (openai-whisper's `all_language_tokens`: 99,
    100 for large-v3)."""
    ids = range(tokenizer.sot_id + 1, tokenizer.translate_id)
    return {tokenizer.decode([i], skip_special=False)[2:-2]: i for i in ids}


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
    attends_to_padding = True

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
        self.tokenizer = tokenizer  # for prompt_for; Seq2SeqTask.__init__ checks the prompt
        self.multilingual = m.vocab_size >= MULTILINGUAL_VOCAB
        # An English-only checkpoint's prompt has no language token: nothing to detect.
        self.language_ids = language_tokens(tokenizer) if self.multilingual else {}
        self.language, self.speech_task = m.language, m.task
        # With auto: the English prompt, for shapes only (see `prompt`).
        self._prompt = self.prompt_for("en" if m.language == AUTO else m.language)
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
        """`prompt_for(model.language, model.task)`. With model.language=auto the language is
        known per recording only: this is then the English prompt, of the same length, for
        shapes (initialization, the label limit); `loss_fn`, and `predict_fn` without a
        prompt, refuse auto."""
        return self._prompt

    def prompt_for(
        self, language: str | None = None, task: str | None = None, timestamps: bool = False
    ) -> tuple[int, ...]:
        """`<|startoftranscript|><|xx|><|task|><|notimestamps|>` for a language code and a task,
        by default model.language (not auto) and model.task; with `timestamps` the same
        without `<|notimestamps|>`. An English-only checkpoint's is
        `<|startoftranscript|><|notimestamps|>`: its language is en and its task transcribe,
        anything else is an error (as transformers' `generate` refuses them)."""
        language, task = language or self.language, task or self.speech_task
        if task not in TASKS:
            raise JaxseqError(f"Whisper task {task!r}: choose one of {list(TASKS)}")
        if language == AUTO:
            raise JaxseqError(
                "language auto: a prompt holds one language; detect each recording's first "
                "(jaxseq.inference.language.recording_languages)"
            )
        if not self.multilingual:
            if (language, task) != ("en", "transcribe"):
                raise JaxseqError(
                    f"language {language!r} with task {task!r}: this English-only checkpoint "
                    f"(a vocabulary under {MULTILINGUAL_VOCAB} tokens) only transcribes English; "
                    "use language en (or auto) and task transcribe"
                )
            return tuple(self.tokenizer.prompt_ids(None, None, timestamps))
        if language not in self.language_ids:
            raise JaxseqError(
                f"language {language!r} is none of this checkpoint's language codes "
                f"({', '.join(self.language_ids)}) nor auto"
            )
        return tuple(self.tokenizer.prompt_ids(language, task, timestamps))

    def timestamp_rules(self) -> TimestampRules:
        """Whisper's timestamp-token rules for this tokenizer, the first timestamp at most the
        generation config's `max_initial_timestamp_index` steps in (no limit without one, as
        transformers' `generate`)."""
        t = self.tokenizer
        limit = t.generation_config.get("max_initial_timestamp_index")
        return TimestampRules(t.timestamp_begin, t.no_timestamps_id, t.eot_id, limit)

    def _require_language(self, what: str) -> None:
        if self.language == AUTO:
            raise JaxseqError(
                f"model.language=auto detects each recording's language when transcribing "
                f"(jaxseq transcribe, Model.transcribe); {what} needs the language of the "
                "audio: set model.language to its code (e.g. en)"
            )

    def loss_fn(
        self, params: Any, batch: Batch, rng: jax.Array, train: bool
    ) -> tuple[jax.Array, Metrics]:
        self._require_language("the loss (training, evaluation)")
        return super().loss_fn(params, batch, rng, train)

    def predict_fn(
        self,
        params: Any,
        batch: Batch,
        decoder: str,
        beam_size: int,
        prompt: tuple[int, ...] | None = None,
        timestamps: bool = False,
    ) -> Any:
        if prompt is None:
            self._require_language("decoding without a prompt (evaluation)")
        return super().predict_fn(params, batch, decoder, beam_size, prompt, timestamps)

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

    def segment_text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)  # its byte-level pieces keep their spaces
