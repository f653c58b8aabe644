"""CTC encoder-only ASR: characters + blank, trained with jaxseq's vmapped CTC loss."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxseq.audio.specaugment import spec_augment
from jaxseq.config import Config
from jaxseq.decoding.ctc import (
    ctc_batch_prefix_beam_search,
    ctc_greedy_decode,
    ctc_greedy_path,
)
from jaxseq.errors import JaxseqError
from jaxseq.losses.ctc import ctc_feasible, ctc_loss
from jaxseq.models.ctc import CTCModel
from jaxseq.tasks.base import ASRTask, Batch, Metrics
from jaxseq.tasks.registry import register
from jaxseq.text.vocab import CharVocab

VOCAB_FILE = "vocab.json"
DECODERS = ("greedy", "prefix_beam")


@register
class CTCTask(ASRTask):
    """Log-mel → characters with a Transformer encoder and a CTC head."""

    family = "ctc"

    def __init__(self, cfg: Config, vocab: CharVocab, n_mels: int):
        self.cfg = cfg
        self.tokenizer = vocab
        self.n_mels = n_mels
        dtype = jnp.bfloat16 if cfg.train.compute_dtype == "bfloat16" else jnp.float32
        self.model = CTCModel(cfg.model, vocab.size, dtype=dtype)

    @classmethod
    def from_dataset(cls, cfg: Config, info: dict, workdir: Path | None = None) -> CTCTask:
        """Characters of the dataset's charset (the same on every process: nothing learned)."""
        del workdir
        vocab = CharVocab.from_charset(info["text"]["charset"])
        return cls(cfg, vocab, int(info["frontend"]["n_mels"]))

    @classmethod
    def from_workdir(cls, cfg: Config, workdir: Path, n_mels: int) -> CTCTask:
        return cls(cfg, CharVocab.load(Path(workdir) / VOCAB_FILE), n_mels)

    def save_tokenizer(self, workdir: Path) -> None:
        self.tokenizer.save(Path(workdir) / VOCAB_FILE)

    def init_variables(self, rng: jax.Array, batch: Batch) -> dict[str, Any]:
        return self.model.init(
            {"params": rng}, batch["features"], batch["feature_lengths"], deterministic=True
        )

    def loss_fn(
        self, params: Any, batch: Batch, rng: jax.Array, train: bool
    ) -> tuple[jax.Array, Metrics]:
        features = batch["features"]  # [batch, frames, n_mels]
        if train:
            features = spec_augment(
                jax.random.fold_in(rng, 1),
                features,
                batch["feature_lengths"],
                self.cfg.spec_augment,
            )
        logits, lengths = self.model.apply(
            {"params": params},
            features,
            batch["feature_lengths"],
            deterministic=not train,
            rngs={"dropout": jax.random.fold_in(rng, 2)},
        )  # [batch, enc_frames, vocab], [batch]
        per_utt = ctc_loss(
            logits, lengths, batch["labels"], batch["label_lengths"], self.tokenizer.blank_id
        )  # [batch]
        weights = batch.get("valid", jnp.ones_like(per_utt, dtype=bool)).astype(jnp.float32)
        tokens = jnp.sum(batch["label_lengths"] * weights)
        loss = jnp.sum(per_utt * weights) / jnp.maximum(tokens, 1.0)
        infeasible = ~ctc_feasible(lengths, batch["labels"], batch["label_lengths"])
        metrics = {
            "utterances": jnp.sum(weights),
            "tokens": tokens,
            "infeasible": jnp.sum(infeasible * weights),
        }
        return loss, metrics

    def predict_fn(
        self, params: Any, batch: Batch, decoder: str, beam_size: int
    ) -> tuple[jax.Array, ...]:
        """Greedy: the best path's ids and their log-probabilities [batch, enc_frames] (argmax
        on the device: the vocabulary's log-probs never reach the host); prefix_beam: log-probs
        [batch, enc_frames, vocab] for the host's beam search. Both with the encoder lengths
        [batch] last."""
        del beam_size  # the beam search runs in `decode`
        logits, lengths = self.model.apply(
            {"params": params}, batch["features"], batch["feature_lengths"], deterministic=True
        )
        if decoder == "greedy":
            return (*ctc_greedy_path(logits), lengths)
        return jax.nn.log_softmax(logits, axis=-1), lengths

    def decode(self, outputs: Any, decoder: str, beam_size: int) -> list[str]:
        if decoder not in DECODERS:
            raise JaxseqError(f"eval.decoder={decoder!r}: CTC decodes with one of {DECODERS}")
        scores_or_ids, lengths = np.asarray(outputs[0]), np.asarray(outputs[-1])
        blank = self.tokenizer.blank_id
        if decoder == "prefix_beam":
            ids = ctc_batch_prefix_beam_search(scores_or_ids, lengths, beam_size, blank)
        else:
            ids = ctc_greedy_decode(scores_or_ids, lengths, blank)
        return [self.tokenizer.decode(seq) for seq in ids]
