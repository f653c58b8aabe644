"""Whisper-style encoder–decoder ASR: log-mel → BPE tokens, cross-entropy, greedy/beam search."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxseq.audio.specaugment import spec_augment
from jaxseq.config import Config
from jaxseq.data.records import decode_record
from jaxseq.decoding.beam_search import beam_search, greedy_search
from jaxseq.errors import JaxseqError
from jaxseq.models.whisper import WhisperDims, WhisperModel, search_cache, search_step_fn
from jaxseq.tasks.base import Batch, Metrics, Task
from jaxseq.text.bpe import BpeTokenizer, train_bpe

TOKENIZER_FILE = "tokenizer.json"
DECODERS = ("greedy", "beam")


def split_texts(dataset_dir: str | Path, info: dict, split: str) -> list[str]:
    """Every transcript of a prepared split (for training its tokenizer)."""
    names = info["splits"][split]["shards"]
    source = grain.sources.ArrayRecordDataSource([str(Path(dataset_dir) / n) for n in names])
    return [decode_record(source[i])["text"] for i in range(len(source))]


def teacher_forcing(
    labels: jax.Array, label_lengths: jax.Array, start_id: int, end_id: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Decoder inputs, targets and target weights from padded labels.

    Args:
      labels: int [batch, L] token ids, padded after `label_lengths`.
      label_lengths: int [batch].
    Returns:
      inputs int32 [batch, L + 1] = start, y_1 .. y_n, pad...; targets int32 [batch, L + 1] =
      y_1 .. y_n, end, pad...; weights float32 [batch, L + 1], 1 on the n + 1 real targets.
    """
    batch, width = labels.shape
    labels = jnp.pad(labels, ((0, 0), (0, 1)))  # room for the end token: [batch, L + 1]
    position = jnp.arange(width + 1)[None, :]
    targets = jnp.where(position == label_lengths[:, None], end_id, labels)
    weights = (position <= label_lengths[:, None]).astype(jnp.float32)
    targets = jnp.where(weights > 0, targets, 0).astype(jnp.int32)
    start = jnp.full((batch, 1), start_id, jnp.int32)
    inputs = jnp.concatenate([start, targets[:, :-1]], axis=1)  # [batch, L + 1]
    return inputs, targets, weights


class Seq2SeqTask(Task):
    """Conv stem + Transformer encoder, causal decoder with cross-attention, tied output layer."""

    def __init__(self, cfg: Config, tokenizer: BpeTokenizer, n_mels: int):
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.n_mels = n_mels
        self._texts: dict[tuple[str, str], list[str]] = {}  # transcripts already read, by split
        m = cfg.model
        self.dims = WhisperDims(
            n_mels=n_mels,
            d_model=m.d_model,
            encoder_layers=m.num_layers,
            encoder_heads=m.num_heads,
            encoder_ffn_dim=m.mlp_dim,
            decoder_layers=m.decoder_layers,
            decoder_heads=m.num_heads,
            decoder_ffn_dim=m.mlp_dim,
            vocab_size=tokenizer.size,
            max_source_positions=m.max_source_positions,
            max_target_positions=cfg.data.max_label_length + 1,
            pad_token_id=tokenizer.pad_id,
            bos_token_id=tokenizer.start_id,
            eos_token_id=tokenizer.end_id,
            decoder_start_token_id=tokenizer.start_id,
        )
        dtype = jnp.bfloat16 if cfg.train.compute_dtype == "bfloat16" else jnp.float32
        self.model = WhisperModel(self.dims, dropout_rate=m.dropout, dtype=dtype)
        if max(cfg.data.buckets) > 2 * m.max_source_positions:
            raise JaxseqError(
                f"data.buckets go up to {max(cfg.data.buckets)} frames but the model's context "
                f"is {2 * m.max_source_positions} (model.max_source_positions="
                f"{m.max_source_positions} encoder frames); lower the buckets or raise the context"
            )

    @classmethod
    def from_dataset(cls, cfg: Config, info: dict) -> Seq2SeqTask:
        """A task whose BPE vocabulary is trained on the training split's transcripts."""
        texts = split_texts(cfg.data.dataset, info, cfg.data.train_split)
        task = cls(cfg, train_bpe(texts, cfg.model.bpe_vocab_size), int(info["frontend"]["n_mels"]))
        task._texts[(str(cfg.data.dataset), cfg.data.train_split)] = texts  # for label_lengths
        return task

    @classmethod
    def from_workdir(cls, cfg: Config, workdir: Path, n_mels: int) -> Seq2SeqTask:
        return cls(cfg, BpeTokenizer.load(Path(workdir) / TOKENIZER_FILE), n_mels)

    def save_tokenizer(self, workdir: Path) -> None:
        self.tokenizer.save(Path(workdir) / TOKENIZER_FILE)

    def label_lengths(self, dataset_dir: str | Path, info: dict, split: str) -> np.ndarray:
        """BPE tokens per record: what `data.max_label_length` limits for this family."""
        texts = self._texts.get((str(dataset_dir), split))
        if texts is None:
            texts = split_texts(dataset_dir, info, split)
        return np.array([len(self.tokenizer.encode(t)) for t in texts], np.int32)

    def init_variables(self, rng: jax.Array, batch: Batch) -> dict[str, Any]:
        inputs, _, _ = teacher_forcing(
            batch["labels"], batch["label_lengths"], self.tokenizer.start_id, self.tokenizer.end_id
        )
        return self.model.init({"params": rng}, batch["features"], batch["feature_lengths"], inputs)

    def _check_source_length(self, frames: int) -> None:
        limit = 2 * self.dims.max_source_positions
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
        # Evaluation batches may pad labels wider than the decoder's positions; an utterance with
        # more tokens than data.max_label_length is scored on its first tokens and counted.
        width = self.cfg.data.max_label_length
        valid = batch.get("valid", jnp.ones(features.shape[0], bool)).astype(jnp.float32)
        truncated = jnp.sum((batch["label_lengths"] > width) * valid)
        inputs, targets, weights = teacher_forcing(
            batch["labels"][:, :width],
            jnp.minimum(batch["label_lengths"], width),
            self.tokenizer.start_id,
            self.tokenizer.end_id,
        )  # [batch, L + 1] each
        logits = self.model.apply(
            {"params": params},
            features,
            batch["feature_lengths"],
            inputs,
            deterministic=not train,
            rngs={"dropout": jax.random.fold_in(rng, 2)},
        )  # [batch, L + 1, vocab]
        vocab = logits.shape[-1]
        soft = optax.smooth_labels(jax.nn.one_hot(targets, vocab), self.cfg.model.label_smoothing)
        per_token = optax.softmax_cross_entropy(logits, soft)  # [batch, L + 1]
        weights = weights * valid[:, None]
        tokens = jnp.sum(weights)
        loss = jnp.sum(per_token * weights) / jnp.maximum(tokens, 1.0)
        correct = (jnp.argmax(logits, -1) == targets) * weights
        metrics = {"utterances": jnp.sum(valid), "tokens": tokens, "correct": jnp.sum(correct)}
        return loss, {**metrics, "labels_truncated": truncated}

    def predict_fn(self, params: Any, batch: Batch, decoder: str, beam_size: int) -> Any:
        """Token ids [batch, max_new_tokens] and lengths (EOS included) of the best hypothesis."""
        if decoder not in DECODERS:
            raise JaxseqError(f"eval.decoder={decoder!r}: seq2seq decodes with one of {DECODERS}")
        self._check_source_length(batch["features"].shape[1])
        encoded, mask = self.model.apply(
            {"params": params},
            batch["features"],
            batch["feature_lengths"],
            method=WhisperModel.encode,
        )  # [batch, enc_frames, d_model], [batch, enc_frames]
        max_new = self.dims.max_target_positions - 1
        cache = search_cache(self.model, params, encoded, mask, self.dims.max_target_positions)
        step_fn = search_step_fn(self.model, params)
        prompt = jnp.full((encoded.shape[0], 1), self.tokenizer.start_id, jnp.int32)
        end = self.tokenizer.end_id
        if decoder == "greedy":
            out = greedy_search(step_fn, cache, prompt, max_new_tokens=max_new, eos_id=end)
            return out.sequences, out.lengths
        out = beam_search(
            step_fn,
            cache,
            prompt,
            beam_size=beam_size,
            max_new_tokens=max_new,
            eos_id=end,
            length_penalty=self.cfg.eval.length_penalty,
        )
        return out.sequences[:, 0], out.lengths[:, 0]  # the best of each item

    def decode(self, outputs: Any, decoder: str, beam_size: int) -> list[str]:
        sequences, lengths = (np.asarray(x) for x in outputs)
        return [self.tokenizer.decode(seq[:n]) for seq, n in zip(sequences, lengths, strict=True)]
