"""Whisper-style encoder–decoder ASR: log-mel → BPE tokens, cross-entropy, greedy/beam search."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np

from jaxseq.audio.specaugment import spec_augment
from jaxseq.config import Config, ModelConfig
from jaxseq.data.records import decode_record
from jaxseq.decoding.beam_search import best_sequences
from jaxseq.decoding.timestamp_rules import TimestampRules
from jaxseq.errors import JaxseqError
from jaxseq.losses.cross_entropy import smoothed_cross_entropy
from jaxseq.losses.ctc import ctc_loss
from jaxseq.models.whisper import WhisperDims, WhisperModel, search_setup
from jaxseq.parallel.shared_files import built_on_process_zero
from jaxseq.tasks.base import ASRTask, Batch, Metrics
from jaxseq.tasks.registry import register
from jaxseq.text.bpe import SPECIALS, BpeTokenizer, placeholder_bpe, train_bpe
from jaxseq.text.timed_targets import FRAMES_PER_STEP, TIME_STEP

TOKENIZER_FILE = "tokenizer.json"
DECODERS = ("greedy", "beam")


def split_texts(dataset_dir: str | Path, info: dict, split: str) -> list[str]:
    """Every transcript of a prepared split (for training its tokenizer)."""
    names = info["splits"][split]["shards"]
    source = grain.sources.ArrayRecordDataSource([str(Path(dataset_dir) / n) for n in names])
    return [decode_record(source[i])["text"] for i in range(len(source))]


def teacher_forcing(
    labels: jax.Array, label_lengths: jax.Array, prompt: Sequence[int], end_id: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Decoder inputs, targets and target weights from padded labels.

    Args:
      labels: int [batch, L] token ids, padded after `label_lengths`.
      label_lengths: int [batch].
      prompt: the P >= 1 tokens every decoder input starts with (a start token, or Whisper's
        `<|startoftranscript|><|en|><|transcribe|><|notimestamps|>`); they are given, not
        predicted, so they carry no weight.
    Returns:
      inputs int32 [batch, P + L] = prompt, y_1 .. y_n, end, pad...; targets int32 [batch, P + L]
      = prompt[1:], y_1 .. y_n, end, pad...; weights float32 [batch, P + L], 1 on the n + 1
      targets y_1 .. y_n, end.
    """
    batch, width = labels.shape
    labels = jnp.pad(labels, ((0, 0), (0, 1)))  # room for the end token: [batch, L + 1]
    position = jnp.arange(width + 1)[None, :]
    after = jnp.where(position == label_lengths[:, None], end_id, labels)
    real = position <= label_lengths[:, None]  # [batch, L + 1]
    after = jnp.where(real, after, 0).astype(jnp.int32)
    given = jnp.broadcast_to(jnp.asarray(prompt, jnp.int32), (batch, len(prompt)))  # [batch, P]
    inputs = jnp.concatenate([given, after[:, :-1]], axis=1)  # [batch, P + L]
    targets = jnp.concatenate([given[:, 1:], after], axis=1)  # [batch, P + L]
    weights = jnp.concatenate(
        [jnp.zeros((batch, len(prompt) - 1), jnp.float32), real.astype(jnp.float32)], axis=1
    )
    return inputs, targets, weights


def model_dims(
    m: ModelConfig,
    n_mels: int,
    *,
    vocab_size: int,
    max_target_positions: int,
    pad_id: int,
    start_id: int,
    end_id: int,
) -> WhisperDims:
    """The model's dimensions from the config (one head count and MLP width for encoder and
    decoder) and the tokenizer's special ids."""
    return WhisperDims(
        n_mels=n_mels,
        d_model=m.d_model,
        encoder_layers=m.num_layers,
        encoder_heads=m.num_heads,
        encoder_ffn_dim=m.mlp_dim,
        decoder_layers=m.decoder_layers,
        decoder_heads=m.num_heads,
        decoder_ffn_dim=m.mlp_dim,
        vocab_size=vocab_size,
        max_source_positions=m.max_source_positions,
        max_target_positions=max_target_positions,
        pad_token_id=pad_id,
        bos_token_id=start_id,
        eos_token_id=end_id,
        decoder_start_token_id=start_id,
    )


def _with_timestamps(tokenizer: BpeTokenizer, cfg: Config) -> BpeTokenizer:
    """The tokenizer with a timestamp token per encoder frame of the model's context (0 s up to
    model.max_source_positions x 20 ms) when model.timestamps is on."""
    if not cfg.model.timestamps:
        return tokenizer
    return tokenizer.with_timestamps(cfg.model.max_source_positions + 1)


@register
class Seq2SeqTask(ASRTask):
    """Conv stem + Transformer encoder, causal decoder with cross-attention, tied output layer.

    Trained from scratch with a BPE vocabulary; `jaxseq.tasks.whisper.WhisperTask` is the same
    model with OpenAI's tokenizer, prompt and 30-second inputs. The hooks that differ are
    `prompt`, `prompt_for`, `language`, `language_ids`, `suppress_ids`, `begin_suppress_ids`,
    `_source` and `ids_to_text`.
    """

    family = "seq2seq"
    # The prompt's language: a code, "auto" (Whisper: detected per recording by
    # `jaxseq.inference.language`), or None for a model whose prompt has no language token.
    language: str | None = None
    # The language tokens a prompt may hold, {code: id} in id order; empty: none.
    language_ids: Mapping[str, int] = MappingProxyType({})
    # Whether the encoder attends to every frame of a window, padding included (Whisper,
    # trained on zero-padded 30 s windows), rather than to the audio alone (as trained here).
    attends_to_padding: bool = False

    def __init__(self, cfg: Config, tokenizer: Any, n_mels: int, dims: WhisperDims | None = None):
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.n_mels = n_mels
        self._texts: dict[tuple[str, str], list[str]] = {}  # transcripts already read, by split
        m = cfg.model
        self.dims = dims or model_dims(
            m,
            n_mels,
            vocab_size=tokenizer.size,
            max_target_positions=cfg.data.max_label_length + 1,
            pad_id=tokenizer.pad_id,
            start_id=tokenizer.start_id,
            end_id=tokenizer.end_id,
        )
        dtype = jnp.bfloat16 if cfg.train.compute_dtype == "bfloat16" else jnp.float32
        if not 0.0 <= m.ctc_weight <= 1.0:
            raise JaxseqError(f"model.ctc_weight={m.ctc_weight} must lie in [0, 1]")
        ctc_vocab = self.dims.vocab_size if m.ctc_weight > 0 else 0
        self.model = WhisperModel(self.dims, m.dropout, dtype, ctc_vocab, m.remat, m.scan_layers)
        self.max_input_frames = self.dims.num_frames
        if max(cfg.data.buckets) > self.dims.num_frames:
            raise JaxseqError(
                f"data.buckets go up to {max(cfg.data.buckets)} frames but the model's context "
                f"is {self.dims.num_frames} (model.max_source_positions="
                f"{m.max_source_positions} encoder frames); lower the buckets or raise the context"
            )
        if cfg.data.max_label_length + len(self.prompt) > self.dims.max_target_positions:
            raise JaxseqError(
                f"data.max_label_length={cfg.data.max_label_length} tokens plus the "
                f"{len(self.prompt)}-token prompt exceed the decoder's "
                f"{self.dims.max_target_positions} positions; lower data.max_label_length"
            )

    @property
    def prompt(self) -> tuple[int, ...]:
        """The tokens every decoder input starts with."""
        return (self.tokenizer.start_id,)

    @property
    def has_timestamps(self) -> bool:
        """Whether the tokenizer has timestamp tokens (Whisper's, or model.timestamps)."""
        return getattr(self.tokenizer, "timestamp_begin", None) is not None

    @property
    def timed(self) -> bool:
        """Whether the model was trained on timed targets alone (model.timestamps): it always
        decodes under `timestamp_rules`."""
        return self.cfg.model.timestamps

    def prompt_for(
        self, language: str | None = None, task: str | None = None, timestamps: bool = False
    ) -> tuple[int, ...]:
        """The prompt for a spoken language and a task (Whisper's transcribe or translate), with
        or without timestamps; a model trained here has no language or task tokens, so both
        must be None, and `timestamps` needs model.timestamps (the prompt is `prompt` either
        way)."""
        if timestamps:
            self.timestamp_rules()  # raises: no timestamp tokens
        if language is not None or task is not None:
            raise JaxseqError(
                f"model.family={self.family} has no language or task tokens (language="
                f"{language!r}, task={task!r}); those choose a Whisper checkpoint's prompt"
            )
        return self.prompt

    def timestamp_rules(self) -> Any:
        """The rules of timestamp-token decoding (its text ids are the BPE pieces, and the
        first timestamp may come anywhere); JaxseqError without timestamp tokens."""
        begin = getattr(self.tokenizer, "timestamp_begin", None)
        if begin is None:
            raise JaxseqError(
                f"model.family={self.family} was trained without timestamp tokens: decode it "
                "without timestamps, or train it with model.timestamps=true"
            )
        end = self.tokenizer.end_id
        return TimestampRules(begin, None, end, None, text_ids=(len(SPECIALS), begin))

    @property
    def suppress_ids(self) -> tuple[int, ...]:
        """Ids never generated: with timestamps, the specials that are never targets (pad,
        start, unk), which the timestamp rules would otherwise leave open after a pair."""
        if not self.timed:
            return ()
        return tuple(i for i in sorted(self.tokenizer.special_ids) if i != self.tokenizer.end_id)

    @property
    def begin_suppress_ids(self) -> tuple[int, ...]:
        """Ids not generated first."""
        return ()

    def _source(self, features: jax.Array, lengths: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The encoder's input from a batch's features [batch, frames, n_mels] and lengths."""
        return features, lengths

    def ids_to_text(self, ids: np.ndarray) -> str:
        """A hypothesis' text from its generated ids (end token excluded)."""
        return self.tokenizer.decode(ids)

    def segment_text(self, ids: list[int]) -> str:
        """A timed segment's text from its text ids as Whisper writes it, with the space
        before its first word, so that segments joined back to back read as the whole text
        (a BPE decoding drops that space)."""
        text = self.tokenizer.decode(ids)
        return f" {text}" if text else text

    @classmethod
    def from_dataset(cls, cfg: Config, info: dict, workdir: Path | None = None) -> Seq2SeqTask:
        """A task whose BPE vocabulary is trained on the training split's transcripts (on
        process 0, shared with the others through `workdir`)."""
        texts = split_texts(cfg.data.dataset, info, cfg.data.train_split)
        if cfg.model.timestamps:
            frontend = info["frontend"]
            step = FRAMES_PER_STEP * frontend["hop_length"] / frontend["sample_rate"]
            if abs(step - TIME_STEP) > 1e-9:
                raise JaxseqError(
                    f"model.timestamps needs 10 ms feature frames (timestamps of {TIME_STEP} s "
                    f"are two frames); {cfg.data.dataset} was prepared with hop_length="
                    f"{frontend['hop_length']} at {frontend['sample_rate']} Hz"
                )
        tokenizer = built_on_process_zero(
            None if workdir is None else workdir / TOKENIZER_FILE,
            lambda: _with_timestamps(train_bpe(texts, cfg.model.bpe_vocab_size), cfg),
            BpeTokenizer.save,
            BpeTokenizer.load,
        )
        task = cls(cfg, tokenizer, int(info["frontend"]["n_mels"]))
        task._texts[(str(cfg.data.dataset), cfg.data.train_split)] = texts  # for label_lengths
        return task

    @classmethod
    def from_config(cls, cfg: Config) -> Seq2SeqTask:
        """A BPE vocabulary of model.bpe_vocab_size placeholder pieces (for `jaxseq compile`)."""
        tokenizer = _with_timestamps(placeholder_bpe(cfg.model.bpe_vocab_size), cfg)
        return cls(cfg, tokenizer, cfg.prepare.frontend.n_mels)

    @classmethod
    def from_workdir(cls, cfg: Config, workdir: Path, n_mels: int) -> Seq2SeqTask:
        tokenizer = BpeTokenizer.load(Path(workdir) / TOKENIZER_FILE)
        if cfg.model.timestamps != (tokenizer.timestamp_begin is not None):
            raise JaxseqError(
                f"model.timestamps={cfg.model.timestamps} but {workdir}/{TOKENIZER_FILE} has "
                f"{tokenizer.num_timestamps} timestamp tokens: the config and the workdir's "
                "tokenizer disagree; use the workdir's config.yaml"
            )
        return cls(cfg, tokenizer, n_mels)

    def save_tokenizer(self, workdir: Path) -> None:
        self.tokenizer.save(Path(workdir) / TOKENIZER_FILE)

    def label_lengths(self, dataset_dir: str | Path, info: dict, split: str) -> np.ndarray:
        """Tokens per record: what `data.max_label_length` limits for this family."""
        texts = self._texts.get((str(dataset_dir), split))
        if texts is None:
            texts = split_texts(dataset_dir, info, split)
        stamps = 2 if self.timed else 0  # <|start|> text <|end|>
        return np.array([len(self.tokenizer.encode(t)) + stamps for t in texts], np.int32)

    def init_variables(self, rng: jax.Array, batch: Batch) -> dict[str, Any]:
        inputs, _, _ = teacher_forcing(
            batch["labels"], batch["label_lengths"], self.prompt, self.tokenizer.end_id
        )
        features, lengths = self._source(batch["features"], batch["feature_lengths"])
        return self.model.init(
            {"params": rng}, features, lengths, inputs, method=WhisperModel.joint
        )

    def _check_source_length(self, frames: int) -> None:
        limit = self.dims.num_frames
        if frames > limit:
            raise JaxseqError(
                f"a batch has {frames} feature frames but the model's context is {limit} "
                f"(model.max_source_positions={self.dims.max_source_positions} encoder frames); "
                "split long audio, or raise model.max_source_positions before training"
            )

    def loss_fn(
        self, params: Any, batch: Batch, rng: jax.Array, train: bool
    ) -> tuple[jax.Array, Metrics]:
        features = batch["features"]  # [batch, frames, n_mels]
        self._check_source_length(features.shape[1])
        if train:
            features = spec_augment(
                jax.random.fold_in(rng, 1),
                features,
                batch["feature_lengths"],
                self.cfg.spec_augment,
            )
        features, lengths = self._source(features, batch["feature_lengths"])
        # Evaluation batches may pad labels wider than the decoder's positions; an utterance with
        # more tokens than data.max_label_length is scored on its first tokens and counted.
        width = self.cfg.data.max_label_length
        valid = batch.get("valid", jnp.ones(features.shape[0], bool)).astype(jnp.float32)
        truncated = jnp.sum((batch["label_lengths"] > width) * valid)
        inputs, targets, weights = teacher_forcing(
            batch["labels"][:, :width],
            jnp.minimum(batch["label_lengths"], width),
            self.prompt,
            self.tokenizer.end_id,
        )  # [batch, P + L] each
        logits, ctc_logits, enc_lengths = self.model.apply(
            {"params": params},
            features,
            lengths,
            inputs,
            deterministic=not train,
            rngs={"dropout": jax.random.fold_in(rng, 2)},
            method=WhisperModel.joint,
        )  # [batch, P + L, vocab], [batch, enc_frames, vocab] or None, [batch]
        per_token = smoothed_cross_entropy(logits, targets, self.cfg.model.label_smoothing)
        weights = weights * valid[:, None]
        tokens = jnp.sum(weights)
        loss = jnp.sum(per_token * weights) / jnp.maximum(tokens, 1.0)
        correct = (jnp.argmax(logits, -1) == targets) * weights
        metrics = {"utterances": jnp.sum(valid), "tokens": tokens, "correct": jnp.sum(correct)}
        if ctc_logits is not None:  # joint CTC/attention
            label_lengths = jnp.minimum(batch["label_lengths"], width)
            per_utt = ctc_loss(
                ctc_logits,
                enc_lengths,
                batch["labels"][:, :width],
                label_lengths,
                blank_id=self.tokenizer.pad_id,
            )  # [batch]
            ctc = jnp.sum(per_utt * valid) / jnp.maximum(tokens, 1.0)  # one normalizer
            weight = self.cfg.model.ctc_weight
            loss = (1.0 - weight) * loss + weight * ctc
            metrics["ctc_nll"] = jnp.sum(per_utt * valid)
        return loss, {**metrics, "labels_truncated": truncated}

    def predict_fn(
        self,
        params: Any,
        batch: Batch,
        decoder: str,
        beam_size: int,
        prompt: tuple[int, ...] | None = None,
        timestamps: bool = False,
    ) -> Any:
        """Token ids [batch, max_new_tokens] and lengths (EOS included) of the best hypothesis.

        `prompt`, static like the decoder: the tokens every hypothesis starts from (default
        `self.prompt`; `prompt_for` gives a Whisper prompt for another language or task).
        `timestamps`: decode under `timestamp_rules` (a prompt without `<|notimestamps|>`);
        a model trained with timestamps always is.
        """
        prompt = self.prompt if prompt is None else tuple(prompt)
        if decoder not in DECODERS:
            raise JaxseqError(f"eval.decoder={decoder!r}: seq2seq decodes with one of {DECODERS}")
        self._check_source_length(batch["features"].shape[1])
        features, lengths = self._source(batch["features"], batch["feature_lengths"])
        encoded, mask = self.model.apply(
            {"params": params}, features, lengths, method=WhisperModel.encode
        )  # [batch, enc_frames, d_model], [batch, enc_frames]
        # No transcript was trained longer than data.max_label_length tokens (+ the end token).
        max_new = min(
            self.dims.max_target_positions - len(prompt), self.cfg.data.max_label_length + 1
        )
        # The self-attention caches hold the prompt and the generated tokens, no more.
        cache, step_fn = search_setup(self.model, params, encoded, mask, len(prompt) + max_new)
        given = jnp.broadcast_to(
            jnp.asarray(prompt, jnp.int32), (encoded.shape[0], len(prompt))
        )  # [batch, P]
        options = dict(
            max_new_tokens=max_new,
            eos_id=self.tokenizer.end_id,
            suppress_ids=self.suppress_ids,
            begin_suppress_ids=self.begin_suppress_ids,
            rules=self.timestamp_rules() if timestamps or self.timed else None,
        )
        return best_sequences(
            decoder,
            step_fn,
            cache,
            given,
            beam_size=beam_size,
            length_penalty=self.cfg.eval.length_penalty,
            **options,
        )

    def hypothesis_ids(self, outputs: Any) -> list[np.ndarray]:
        """Each row's generated ids from `predict_fn` outputs, end tokens dropped."""
        sequences, lengths = (np.asarray(x) for x in outputs)
        end = self.tokenizer.end_id
        return [seq[:n][seq[:n] != end] for seq, n in zip(sequences, lengths, strict=True)]

    def decode(self, outputs: Any, decoder: str, beam_size: int) -> list[str]:
        return [self.ids_to_text(ids) for ids in self.hypothesis_ids(outputs)]
