"""RNN encoder–decoder ASR with attention: log-mel → characters (or BPE), listen-attend-spell.

Teacher forcing with an optional scheduled sampling, label-smoothed cross-entropy, greedy and
beam search through `jaxseq.decoding.beam_search` (the decoder's recurrent state is the cache),
exhaustive search (`jaxseq.decoding.exhaustive`, tiny vocabularies and lengths only),
and attention-alignment plots in the evaluation report (`plot_batch`). The model is
`jaxseq.models.rnn.RNNModel`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from jaxseq.audio.specaugment import spec_augment
from jaxseq.config import Config, ConfigError
from jaxseq.decoding.beam_search import best_sequences
from jaxseq.decoding.exhaustive import exhaustive_search
from jaxseq.errors import JaxseqError
from jaxseq.losses.cross_entropy import smoothed_cross_entropy
from jaxseq.models.rnn import CELLS, Memory, RNNDims, RNNModel
from jaxseq.parallel.shared_files import built_on_process_zero
from jaxseq.tasks.base import STEP_KEY, ASRTask, Batch, Metrics
from jaxseq.tasks.registry import register
from jaxseq.tasks.seq2seq import split_texts, teacher_forcing
from jaxseq.text.bpe import SPECIALS, UNK, BpeTokenizer, placeholder_bpe, train_bpe

TOKENIZER_FILE = "tokenizer.json"
DECODERS = ("greedy", "beam", "exhaustive")
# eval.decoder=exhaustive scores all vocab_size ** (data.max_label_length + 1) sequences of each
# utterance at once (the last step runs the decoder on batch × that / vocab_size states), so it
# is refused above this many per utterance: 2 ** 16 keeps an eval batch of 32 utterances to ~2M
# scored rows, seconds on a CPU for a small RNN; it is an oracle for tiny problems, not a decoder
# for real vocabularies (32 tokens allow data.max_label_length <= 2).
EXHAUSTIVE_MAX_SEQUENCES = 1 << 16


def char_tokenizer(charset: str) -> BpeTokenizer:
    """One id per character of `charset` (space as `▁`) after the specials `<pad>` `<s>`
    `</s>` `<unk>` (ids 0-3): a BPE tokenizer without merges, saved and loaded as any other.
    A text of n characters encodes to n ids."""
    pieces = [*SPECIALS, *("▁" if c == " " else c for c in charset)]
    if len(set(pieces)) != len(pieces):
        raise JaxseqError(f"charset {charset!r} repeats a character or holds a special token")
    tok = Tokenizer(
        models.BPE(vocab={p: i for i, p in enumerate(pieces)}, merges=[], unk_token=UNK)
    )
    tok.add_special_tokens(list(SPECIALS))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="never")
    return BpeTokenizer(tok)


def own_inputs(inputs: jax.Array, predictions: jax.Array, swap: jax.Array) -> jax.Array:
    """Scheduled sampling's decoder inputs.

    Args:
      inputs: int [batch, L] teacher-forced inputs (start token, y_1, ..., y_{L-1}).
      predictions: int [batch, L] the model's argmax at each position (its guess of y_{t+1}).
      swap: bool [batch, L] where to feed the model's own previous prediction.
    Returns:
      int [batch, L]: position t > 0 holds predictions[t - 1] where swap, else inputs[t];
      position 0 (the start token) is always given.
    """
    previous = jnp.concatenate([inputs[:, :1], predictions[:, :-1]], axis=1)  # [batch, L]
    swap = swap & (jnp.arange(inputs.shape[1]) > 0)[None, :]
    return jnp.where(swap, previous, inputs).astype(inputs.dtype)


@register
class RNNTask(ASRTask):
    """Log-mel → tokens with a (bi)LSTM/GRU encoder and an attention LSTM/GRU decoder."""

    family = "rnn"

    def __init__(self, cfg: Config, tokenizer: BpeTokenizer, n_mels: int):
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.n_mels = n_mels
        m, r = cfg.model, cfg.rnn
        if r.cell not in CELLS:
            raise JaxseqError(f"rnn.cell={r.cell!r}: choose one of {CELLS}")
        if r.encoder_layers < 1 or r.decoder_layers < 1:
            raise JaxseqError("rnn.encoder_layers and rnn.decoder_layers must be >= 1")
        if any(f < 1 for f in r.pyramid) or len(r.pyramid) > r.encoder_layers:
            raise JaxseqError(
                f"rnn.pyramid={list(r.pyramid)}: one factor >= 1 per encoder layer at most "
                f"(rnn.encoder_layers={r.encoder_layers})"
            )
        if not 0.0 <= r.scheduled_sampling <= 1.0:
            raise JaxseqError(f"rnn.scheduled_sampling={r.scheduled_sampling} must lie in [0, 1]")
        self.dims = RNNDims(
            n_mels=n_mels,
            vocab_size=tokenizer.size,
            cell=r.cell,
            hidden=m.d_model,
            encoder_layers=r.encoder_layers,
            decoder_layers=r.decoder_layers,
            bidirectional=r.bidirectional,
            pyramid=tuple(r.pyramid),
            input_feeding=r.input_feeding,
        )
        dtype = jnp.bfloat16 if cfg.train.compute_dtype == "bfloat16" else jnp.float32
        self.model = RNNModel(self.dims, m.dropout, dtype)
        if cfg.eval.decoder == "exhaustive":  # fail before training, not at its first evaluation
            self.exhaustive_sequences()
        self._texts: dict[tuple[str, str], list[str]] = {}

    @classmethod
    def from_dataset(cls, cfg: Config, info: dict, workdir: Path | None = None) -> RNNTask:
        """Characters of the dataset's charset, or BPE trained on the training transcripts
        (on process 0, shared with the others through `workdir`)."""
        n_mels = int(info["frontend"]["n_mels"])
        if cfg.rnn.tokenizer == "char":
            return cls(cfg, char_tokenizer(info["text"]["charset"]), n_mels)
        texts = split_texts(cfg.data.dataset, info, cfg.data.train_split)
        tokenizer = built_on_process_zero(
            None if workdir is None else workdir / TOKENIZER_FILE,
            lambda: train_bpe(texts, cfg.model.bpe_vocab_size),
            BpeTokenizer.save,
            BpeTokenizer.load,
        )
        task = cls(cfg, tokenizer, n_mels)
        task._texts[(str(cfg.data.dataset), cfg.data.train_split)] = texts
        return task

    @classmethod
    def from_config(cls, cfg: Config) -> RNNTask:
        """Characters of prepare.text.charset, or a BPE vocabulary of model.bpe_vocab_size
        placeholder pieces (for `jaxseq compile`)."""
        n_mels = cfg.prepare.frontend.n_mels
        if cfg.rnn.tokenizer == "char":
            return cls(cfg, char_tokenizer(cfg.prepare.text.charset), n_mels)
        return cls(cfg, placeholder_bpe(cfg.model.bpe_vocab_size), n_mels)

    @classmethod
    def from_workdir(cls, cfg: Config, workdir: Path, n_mels: int) -> RNNTask:
        return cls(cfg, BpeTokenizer.load(Path(workdir) / TOKENIZER_FILE), n_mels)

    def save_tokenizer(self, workdir: Path) -> None:
        self.tokenizer.save(Path(workdir) / TOKENIZER_FILE)

    def label_lengths(self, dataset_dir: str | Path, info: dict, split: str) -> np.ndarray | None:
        """Tokens per record; None for characters (one id per character: the text lengths)."""
        if self.cfg.rnn.tokenizer == "char":
            return None
        texts = self._texts.get((str(dataset_dir), split))
        if texts is None:
            texts = split_texts(dataset_dir, info, split)
        return np.array([len(self.tokenizer.encode(t)) for t in texts], np.int32)

    # ------------------------------------------------------------------------ training

    def _teacher_forcing(self, batch: Batch) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Decoder inputs, targets, weights [batch, 1 + data.max_label_length] (longer labels
        are scored on their first tokens)."""
        width = self.cfg.data.max_label_length
        return teacher_forcing(
            batch["labels"][:, :width],
            jnp.minimum(batch["label_lengths"], width),
            (self.tokenizer.start_id,),
            self.tokenizer.end_id,
        )

    def init_variables(self, rng: jax.Array, batch: Batch) -> dict[str, Any]:
        inputs, _, _ = self._teacher_forcing(batch)
        return self.model.init(
            {"params": rng, "dropout": rng}, batch["features"], batch["feature_lengths"], inputs
        )

    def sampling_probability(self, step: jax.Array | None) -> jax.Array:
        """Scheduled sampling's probability at train step `step` (float32 []): linear from 0
        at step 0 to rnn.scheduled_sampling at rnn.scheduled_sampling_steps (0: the last
        step), then flat. Without a step (a direct call of the loss) the full probability."""
        r = self.cfg.rnn
        if step is None:
            return jnp.float32(r.scheduled_sampling)
        ramp = r.scheduled_sampling_steps or self.cfg.train.num_steps
        progress = jnp.clip(step.astype(jnp.float32) / max(ramp, 1), 0.0, 1.0)
        return r.scheduled_sampling * progress

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
        width = self.cfg.data.max_label_length
        valid = batch.get("valid", jnp.ones(features.shape[0], bool)).astype(jnp.float32)
        truncated = jnp.sum((batch["label_lengths"] > width) * valid)
        inputs, targets, weights = self._teacher_forcing(batch)  # [batch, 1 + L] each
        rngs = {"dropout": jax.random.fold_in(rng, 2)}
        memory, carry = self.model.apply(
            {"params": params},
            features,
            batch["feature_lengths"],
            not train,
            rngs=rngs,
            method=RNNModel.encode,
        )
        if train:
            inputs = self._train_inputs(params, batch, memory, carry, inputs, rng)
        logits, _ = self.model.apply(
            {"params": params},
            carry,
            inputs,
            memory,
            not train,
            rngs={"dropout": jax.random.fold_in(rng, 3)},
            method=RNNModel.decode,
        )  # [batch, 1 + L, vocab]
        per_token = smoothed_cross_entropy(logits, targets, self.cfg.model.label_smoothing)
        weights = weights * valid[:, None]
        tokens = jnp.sum(weights)
        loss = jnp.sum(per_token * weights) / jnp.maximum(tokens, 1.0)
        correct = (jnp.argmax(logits, -1) == targets) * weights
        metrics = {
            "utterances": jnp.sum(valid),
            "tokens": tokens,
            "correct": jnp.sum(correct),
            "labels_truncated": truncated,
        }
        return loss, metrics

    def _train_inputs(
        self,
        params: Any,
        batch: Batch,
        memory: Memory,
        carry: dict[str, jax.Array],
        inputs: jax.Array,
        rng: jax.Array,
    ) -> jax.Array:
        """The decoder inputs int [batch, 1 + L] of a training step: with scheduled sampling
        on, each token (after the start token) is, with the step's probability, the model's
        own prediction (`_own_inputs`)."""
        if self.cfg.rnn.scheduled_sampling <= 0:
            return inputs
        step = batch.get(STEP_KEY)
        probability = self.sampling_probability(None if step is None else jnp.max(step))
        return self._own_inputs(params, memory, carry, inputs, probability, rng)

    def _own_inputs(
        self,
        params: Any,
        memory: Memory,
        carry: dict[str, jax.Array],
        inputs: jax.Array,
        probability: jax.Array,
        rng: jax.Array,
    ) -> jax.Array:
        """Scheduled sampling: a first teacher-forced pass of the decoder (constants: no
        gradient flows through it) gives the model's argmax at every position; each input
        token after the first is swapped, with `probability`, for the previous position's."""
        logits, _ = self.model.apply(
            {"params": jax.lax.stop_gradient(params)},
            jax.lax.stop_gradient(carry),
            inputs,
            jax.lax.stop_gradient(memory),
            False,
            rngs={"dropout": jax.random.fold_in(rng, 4)},
            method=RNNModel.decode,
        )  # [batch, 1 + L, vocab]
        predictions = jnp.argmax(logits, axis=-1).astype(inputs.dtype)
        swap = jax.random.uniform(jax.random.fold_in(rng, 5), inputs.shape) < probability
        return own_inputs(inputs, predictions, swap)

    # ------------------------------------------------------------------------ decoding

    def search_setup(self, params: Any, batch: Batch) -> tuple[Any, Any, Memory]:
        """(init_cache, step_fn, memory) for `jaxseq.decoding.beam_search`: the cache is the
        decoder's carry (recurrent state + attentional state, leading axis batch); the memory
        stays per utterance inside `step_fn` (`attend` groups each item's hypotheses)."""
        memory, carry = self.model.apply(
            {"params": params},
            batch["features"],
            batch["feature_lengths"],
            method=RNNModel.encode,
        )

        def step_fn(tokens: jax.Array, cache: Any, position: jax.Array):
            del position  # the recurrent state is all the history there is
            cache, (logits, _) = self.model.apply(
                {"params": params}, cache, tokens, memory, method=RNNModel.decode_step
            )
            return jax.nn.log_softmax(logits, axis=-1), cache  # [n, vocab]

        return carry, step_fn, memory

    def exhaustive_sequences(self) -> int:
        """The sequences exhaustive search scores per utterance, vocab_size **
        (data.max_label_length + 1); raises ConfigError above EXHAUSTIVE_MAX_SEQUENCES."""
        vocab, steps = self.tokenizer.size, self.cfg.data.max_label_length + 1
        count = vocab**steps
        if count <= EXHAUSTIVE_MAX_SEQUENCES:
            return count
        fits = 0  # the most steps whose search fits the limit
        while vocab ** (fits + 1) <= EXHAUSTIVE_MAX_SEQUENCES:
            fits += 1
        shorten = (
            f"lower data.max_label_length to {fits - 1} or less"
            if fits > 1
            else f"no label length fits a vocabulary of {vocab} tokens"
        )
        size = f"{count:,}" if count < 10**12 else f"~1e{len(str(count)) - 1}"
        raise ConfigError(
            f"eval.decoder=exhaustive would score vocab_size ** (data.max_label_length + 1) = "
            f"{vocab} ** {steps} = {size} sequences per utterance, over its limit of "
            f"{EXHAUSTIVE_MAX_SEQUENCES:,} (jaxseq.tasks.rnn.EXHAUSTIVE_MAX_SEQUENCES): decode "
            f"with eval.decoder=beam (a wide eval.beam_size) instead, or {shorten}"
        )

    def predict_fn(self, params: Any, batch: Batch, decoder: str, beam_size: int) -> Any:
        """Token ids [batch, max_label_length + 1] and lengths (EOS included) of the best
        hypothesis. "exhaustive" returns the most probable sequence (eval.length_penalty does
        not apply) and refuses a search over EXHAUSTIVE_MAX_SEQUENCES per utterance."""
        if decoder not in DECODERS:
            raise JaxseqError(f"eval.decoder={decoder!r}: rnn decodes with one of {DECODERS}")
        if decoder == "exhaustive":
            self.exhaustive_sequences()  # before any tracing: the size is static
        cache, step_fn, _ = self.search_setup(params, batch)
        rows = batch["features"].shape[0]
        prompt = jnp.full((rows, 1), self.tokenizer.start_id, jnp.int32)
        options = dict(
            max_new_tokens=self.cfg.data.max_label_length + 1, eos_id=self.tokenizer.end_id
        )
        if decoder == "exhaustive":
            max_rows = rows * EXHAUSTIVE_MAX_SEQUENCES
            out = exhaustive_search(step_fn, cache, prompt, max_rows=max_rows, **options)
            return out.sequences, out.lengths  # [batch, max_label_length + 1], [batch]
        return best_sequences(
            decoder,
            step_fn,
            cache,
            prompt,
            beam_size=beam_size,
            length_penalty=self.cfg.eval.length_penalty,
            **options,
        )

    def decode(self, outputs: Any, decoder: str, beam_size: int) -> list[str]:
        sequences, lengths = (np.asarray(x) for x in outputs)
        end = self.tokenizer.end_id
        return [
            self.tokenizer.decode(seq[:n][seq[:n] != end])
            for seq, n in zip(sequences, lengths, strict=True)
        ]

    # ------------------------------------------------------------------------ evaluation

    @property
    def num_plots(self) -> int:
        """Utterances whose attention the evaluation report plots."""
        return self.cfg.rnn.plots

    def plot_batch(self, params: Any, batch: Batch, outputs: Any) -> tuple[jax.Array, ...]:
        """The attention along each decoded hypothesis: the decoder teacher-forced on its own
        output `outputs` = (sequences [batch, steps], lengths [batch]) from `predict_fn`.

        Returns weights float32 [batch, steps, frames'] (row t: while emitting token t), the
        hypothesis lengths [batch] and the valid encoder frames [batch]."""
        sequences, lengths = outputs
        start = jnp.full((sequences.shape[0], 1), self.tokenizer.start_id, jnp.int32)
        inputs = jnp.concatenate([start, sequences[:, :-1].astype(jnp.int32)], axis=1)
        memory, carry = self.model.apply(
            {"params": params}, batch["features"], batch["feature_lengths"], method=RNNModel.encode
        )
        _, weights = self.model.apply(
            {"params": params}, carry, inputs, memory, method=RNNModel.decode
        )
        return weights, lengths, memory.lengths
