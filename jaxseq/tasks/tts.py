"""Text-to-speech: characters → log-mel frames + stop, teacher-forced, generated autoregressively.

A prepared ASR dataset is read the other way round: the batch's `labels` (the transcript's
character ids) are the input and its `features` (log-mel) the target. The vocoder that turns
generated spectrograms into audio is outside the model (jaxseq.audio.vocoder).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxseq.config import Config, TextConfig
from jaxseq.decoding.frames import GeneratedFrames, generate_frames
from jaxseq.errors import JaxseqError
from jaxseq.losses.tts import guided_attention_loss, spectrogram_error, stop_bce
from jaxseq.models.tts import TTSDims, TTSModel
from jaxseq.tasks.base import STEP_KEY, Batch, Metrics, Task
from jaxseq.tasks.registry import register
from jaxseq.text.normalize import normalize_text, unknown_characters
from jaxseq.text.vocab import CharVocab

VOCAB_FILE = "vocab.json"


class Synthesized(NamedTuple):
    """Generated spectrograms (device arrays, or NumPy after `jax.device_get`)."""

    mel: Any  # float32 [batch, max_frames, n_mels] after the post-net; zero past `lengths`
    lengths: Any  # int32 [batch] frames up to and including the stop frame
    stopped: Any  # bool [batch] False where generation reached tts.max_frames without a stop
    alignment: Any  # float32 [batch, max_steps, chars] cross-attention (layers, heads averaged)


def mel_teacher_forcing(features: jax.Array, r: int) -> tuple[jax.Array, jax.Array]:
    """Decoder inputs and targets for reduction factor r.

    Args:
      features: [batch, frames, n_mels] target log-mel, zero padded.
    Returns:
      inputs [batch, steps, n_mels] (zeros, then the last frame of each previous group of r)
      and targets [batch, steps * r, n_mels] (features padded to a multiple of r), steps =
      ceil(frames / r).
    """
    batch, frames, n_mels = features.shape
    steps = math.ceil(frames / r)
    targets = jnp.pad(features, ((0, 0), (0, steps * r - frames), (0, 0)))
    last = targets.reshape(batch, steps, r, n_mels)[:, :-1, -1]  # [batch, steps - 1, n_mels]
    inputs = jnp.concatenate([jnp.zeros((batch, 1, n_mels), features.dtype), last], axis=1)
    return inputs, targets


def mean_cross_attention(intermediates: Any) -> jax.Array:
    """The sown cross-attention weights averaged over layers and heads: each layer's leaf is
    [batch, heads, steps, chars] → [batch, steps, chars]."""
    leaves = jax.tree.leaves(intermediates)
    if not leaves:
        raise ValueError("no cross-attention weights were sown")
    return jnp.mean(jnp.stack([w.mean(axis=1) for w in leaves]), axis=0)


@register
class TTSTask(Task):
    """SpeechT5-style TTS: text encoder, autoregressive mel decoder with stop, post-net."""

    family = "tts"
    metric_kind = "tts"

    def __init__(self, cfg: Config, vocab: CharVocab, n_mels: int):
        self.cfg = cfg
        self.tokenizer = vocab
        self.n_mels = n_mels
        m, t = cfg.model, cfg.tts
        if t.reduction_factor < 1:
            raise JaxseqError(f"tts.reduction_factor={t.reduction_factor} must be >= 1")
        for key in ("scheduled_sampling", "frame_dropout", "free_running"):
            if not 0.0 <= getattr(t, key) <= 1.0:
                raise JaxseqError(f"tts.{key}={getattr(t, key)} must lie in [0, 1]")
        if not 0.0 < t.stop_threshold <= 1.0:
            raise JaxseqError(f"tts.stop_threshold={t.stop_threshold} must lie in (0, 1]")
        longest = max(t.max_frames, max(cfg.data.buckets))
        self.dims = TTSDims(
            vocab_size=vocab.size,
            n_mels=n_mels,
            d_model=m.d_model,
            num_heads=m.num_heads,
            encoder_layers=m.num_layers,
            decoder_layers=m.decoder_layers,
            mlp_dim=m.mlp_dim,
            reduction_factor=t.reduction_factor,
            prenet_dim=t.prenet_dim,
            prenet_dropout=t.prenet_dropout,
            postnet_layers=t.postnet_layers,
            postnet_channels=t.postnet_channels,
            postnet_kernel=t.postnet_kernel,
            max_steps=math.ceil(longest / t.reduction_factor),
        )
        dtype = jnp.bfloat16 if cfg.train.compute_dtype == "bfloat16" else jnp.float32
        self.model = TTSModel(self.dims, m.dropout, dtype, m.remat)

    @classmethod
    def from_dataset(cls, cfg: Config, info: dict, workdir: Path | None = None) -> TTSTask:
        """Characters of the dataset's charset (the same on every process)."""
        del workdir
        vocab = CharVocab.from_charset(info["text"]["charset"])
        return cls(cfg, vocab, int(info["frontend"]["n_mels"]))

    @classmethod
    def from_workdir(cls, cfg: Config, workdir: Path, n_mels: int) -> TTSTask:
        return cls(cfg, CharVocab.load(Path(workdir) / VOCAB_FILE), n_mels)

    def save_tokenizer(self, workdir: Path) -> None:
        self.tokenizer.save(Path(workdir) / VOCAB_FILE)

    @property
    def best_metric(self) -> str:
        """Intelligibility (CER of the recognizer) when one is configured, else the MCD."""
        return "cer" if self.cfg.tts.asr_workdir else "mel_cepstral_distortion"

    def init_variables(self, rng: jax.Array, batch: Batch) -> dict[str, Any]:
        inputs, _ = mel_teacher_forcing(batch["features"], self.dims.reduction_factor)
        return self.model.init(
            {"params": rng, "dropout": rng},
            batch["labels"],
            batch["label_lengths"],
            inputs,
            batch["feature_lengths"],
        )

    def loss_fn(
        self, params: Any, batch: Batch, rng: jax.Array, train: bool
    ) -> tuple[jax.Array, Metrics]:
        t, r = self.cfg.tts, self.dims.reduction_factor
        ids, id_lengths = batch["labels"], batch["label_lengths"]  # [batch, chars], [batch]
        frame_lengths = batch["feature_lengths"]  # [batch]
        inputs, targets = mel_teacher_forcing(batch["features"], r)  # [b, S, m], [b, S * r, m]
        if train:
            inputs = self._train_inputs(params, batch, inputs, jax.random.fold_in(rng, 3))
        (before, after, stop), state = self.model.apply(
            {"params": params},
            ids,
            id_lengths,
            inputs,
            frame_lengths,
            deterministic=not train,
            rngs={"dropout": jax.random.fold_in(rng, 2)},
            mutable=["intermediates"],
        )  # [b, S * r, m] twice, [b, S * r]
        position = jnp.arange(targets.shape[1])[None, :]  # [1, S * r]
        steps = -(-frame_lengths // r)  # [batch] decoder steps with a target frame
        frame_mask = position < frame_lengths[:, None]
        spectrogram = spectrogram_error(
            before, targets, frame_mask, t.spectrogram_loss
        ) + spectrogram_error(after, targets, frame_mask, t.spectrogram_loss)  # [batch]
        # Stop: 1 from the last real frame on, scored up to the end of its step's group.
        stop_target = position >= frame_lengths[:, None] - 1
        stop_mask = position < (steps * r)[:, None]
        stop = stop_bce(stop, stop_target, stop_mask, t.stop_pos_weight)  # [batch]
        attention = mean_cross_attention(state["intermediates"])  # [batch, S, chars]
        guided = r * guided_attention_loss(
            attention, steps, id_lengths, t.guided_attention_sigma
        )  # [batch], per frame like the other terms
        valid = batch.get("valid", jnp.ones(ids.shape[0], bool)).astype(jnp.float32)
        frames = jnp.sum(frame_lengths * valid)
        total = spectrogram + stop + t.guided_attention_weight * guided
        loss = jnp.sum(total * valid) / jnp.maximum(frames, 1.0)
        metrics = {
            "utterances": jnp.sum(valid),
            "tokens": frames,  # the normalizer: target frames
            "spectrogram": jnp.sum(spectrogram * valid),
            "stop_bce": jnp.sum(stop * valid),
            "guided_attention": jnp.sum(guided * valid),
        }
        return loss, metrics

    def _train_inputs(
        self, params: Any, batch: Batch, inputs: jax.Array, rng: jax.Array
    ) -> jax.Array:
        """The decoder inputs [batch, steps, n_mels] of a training step: scheduled sampling
        (`_own_inputs`), free-running rows (`_free_running_inputs`), then whole frames zeroed
        with probability tts.frame_dropout."""
        t = self.cfg.tts
        if t.scheduled_sampling > 0:
            inputs = self._own_inputs(params, batch, inputs, jax.random.fold_in(rng, 0))
        if t.free_running > 0:
            inputs = self._free_running_inputs(params, batch, inputs, jax.random.fold_in(rng, 2))
        if t.frame_dropout > 0:
            dropped = jax.random.bernoulli(
                jax.random.fold_in(rng, 1), t.frame_dropout, inputs.shape[:2]
            )  # [batch, steps]
            inputs = jnp.where(dropped[:, :, None], 0.0, inputs).astype(inputs.dtype)
        return inputs

    def _own_inputs(
        self, params: Any, batch: Batch, inputs: jax.Array, rng: jax.Array
    ) -> jax.Array:
        """Scheduled sampling: `inputs` [batch, steps, n_mels] with each step's frame replaced,
        with probability tts.scheduled_sampling, by the last frame the model predicts for the
        previous step when teacher-forced (a constant: no gradient flows through it)."""
        r = self.dims.reduction_factor
        before, _, _ = self.model.apply(
            {"params": jax.lax.stop_gradient(params)},
            batch["labels"],
            batch["label_lengths"],
            inputs,
            batch["feature_lengths"],
            deterministic=False,
            rngs={"dropout": jax.random.fold_in(rng, 0)},
        )  # [batch, steps * r, n_mels]
        own, _ = mel_teacher_forcing(jax.lax.stop_gradient(before), r)  # [batch, steps, n_mels]
        swap = jax.random.bernoulli(
            jax.random.fold_in(rng, 1), self.cfg.tts.scheduled_sampling, inputs.shape[:2]
        )  # [batch, steps]
        return jnp.where(swap[:, :, None], own.astype(inputs.dtype), inputs)

    def _free_running_inputs(
        self, params: Any, batch: Batch, inputs: jax.Array, rng: jax.Array
    ) -> jax.Array:
        """`inputs` [batch, steps, n_mels] with each row replaced, with probability
        tts.free_running, by what generation would feed the decoder: the last frame of each
        step the model generated from its own previous output, for all `steps` steps (no stop,
        pre-net dropout on; a constant: no gradient flows through it).

        Before step tts.free_running_from (`batch["step"]`) the inputs are returned unchanged
        and nothing is generated."""
        t, r = self.cfg.tts, self.dims.reduction_factor

        def generated() -> jax.Array:
            out = self._generate(
                jax.lax.stop_gradient(params),
                batch["labels"],
                batch["label_lengths"],
                jax.random.fold_in(rng, 0),
                max_steps=inputs.shape[1],
                threshold=2.0,  # above any probability: every row runs all the steps
            )
            own, _ = mel_teacher_forcing(out.frames, r)  # [batch, steps, n_mels]
            rows = jax.random.bernoulli(
                jax.random.fold_in(rng, 1), t.free_running, inputs.shape[:1]
            )
            return jnp.where(rows[:, None, None], own.astype(inputs.dtype), inputs)

        step = batch.get(STEP_KEY)
        if step is None or t.free_running_from <= 0:
            return generated()
        return jax.lax.cond(jnp.max(step) >= t.free_running_from, generated, lambda: inputs)

    def encode_text(self, text: str, policy: TextConfig) -> np.ndarray:
        """int32 [chars] ids of `text` normalized under the workdir's text policy.

        Raises:
          JaxseqError: the text is empty, uses characters outside the vocabulary (named), or
            is longer than data.max_label_length characters.
        """
        normalized = normalize_text(text, policy)
        if not normalized:
            raise JaxseqError(f"text {text!r} is empty after normalization; nothing to say")
        unknown = unknown_characters(normalized, TextConfig(charset="".join(self.tokenizer.chars)))
        if unknown:
            raise JaxseqError(
                f"text {text!r} has characters outside the model's vocabulary: {unknown}; "
                f"the model knows {''.join(self.tokenizer.chars)!r} (write numbers as words)"
            )
        limit = self.cfg.data.max_label_length
        if len(normalized) > limit:
            raise JaxseqError(
                f"text {text[:40]!r}... has {len(normalized)} characters but the model was "
                f"trained on at most data.max_label_length={limit}; split it into sentences"
            )
        return self.tokenizer.encode(normalized)

    def synthesize_fn(
        self, params: Any, ids: jax.Array, id_lengths: jax.Array, rng: jax.Array
    ) -> Synthesized:
        """Generates spectrograms for text ids int [batch, chars] (jit it; device side).

        Each item stops at its first frame with p(stop) >= tts.stop_threshold, or after
        tts.max_frames frames (rounded up to whole steps). `rng` drives the pre-net dropout.
        """
        t = self.cfg.tts
        out = self._generate(
            params,
            ids,
            id_lengths,
            rng,
            max_steps=math.ceil(t.max_frames / self.dims.reduction_factor),
            threshold=t.stop_threshold,
        )
        mel = self.model.apply(
            {"params": params}, out.frames, out.lengths, method=TTSModel.refine
        )  # [batch, max_steps * r, n_mels]
        keep = jnp.arange(mel.shape[1])[None, :, None] < out.lengths[:, None, None]
        return Synthesized(mel * keep, out.lengths, out.stopped, out.aux)

    def _generate(
        self,
        params: Any,
        ids: jax.Array,
        id_lengths: jax.Array,
        rng: jax.Array,
        *,
        max_steps: int,
        threshold: float,
    ) -> GeneratedFrames:
        """The decoder's cached autoregressive loop (`generate_frames`) for text ids int
        [batch, chars]: frames before the post-net, and per-step cross-attention as `aux`."""
        r, model = self.dims.reduction_factor, self.model
        batch = ids.shape[0]
        encoded, text_mask = model.apply(
            {"params": params}, ids, id_lengths, method=TTSModel.encode
        )  # [batch, chars, d_model], [batch, chars]
        _, state = model.apply(
            {"params": params},
            jnp.zeros((batch, max_steps, self.n_mels), jnp.float32),  # only the shape matters
            encoded,
            text_mask,
            use_cache=True,
            method=TTSModel.decode,
            mutable=["cache"],
            rngs={"dropout": rng},
        )

        def step_fn(prev, cache, step):
            (mel, stop), out = model.apply(
                {"params": params, "cache": cache},
                prev[:, None],
                None,
                text_mask,
                use_cache=True,
                method=TTSModel.decode,
                mutable=["cache", "intermediates"],
                rngs={"dropout": jax.random.fold_in(rng, step)},
            )  # [batch, 1, r, n_mels], [batch, 1, r]
            attention = mean_cross_attention(out["intermediates"])[:, 0]  # [batch, chars]
            return mel[:, 0], jax.nn.sigmoid(stop[:, 0]), attention, out["cache"]

        return generate_frames(
            step_fn,
            state["cache"],
            batch=batch,
            n_mels=self.n_mels,
            reduction_factor=r,
            aux_shape=(ids.shape[1],),
            max_steps=max_steps,
            threshold=threshold,
        )

    def eval_options(self, decoder: str | None = None, beam_size: int | None = None) -> dict:
        """The decoding of the recognizer that scores intelligibility (tts.asr_workdir), as
        given (None: the recognizer's own config); the TTS itself has no options."""
        given = {"decoder": decoder, "beam_size": beam_size}
        return {k: v for k, v in given.items() if v is not None}

    def predict_fn(self, params: Any, batch: Batch, **recognizer: Any) -> Synthesized:
        """The spectrograms generated from a batch's transcripts (`synthesize_fn` with the
        pre-net dropout drawn from a fixed key, so that evaluations repeat)."""
        del recognizer  # the options of the intelligibility recognizer
        return self.synthesize_fn(
            params, batch["labels"], batch["label_lengths"], jax.random.PRNGKey(0)
        )

    def decode(self, outputs: Synthesized, **recognizer: Any) -> list[Synthesized]:
        """One `Synthesized` per row, cut to its generated frames and steps."""
        del recognizer
        r = self.dims.reduction_factor
        return [
            Synthesized(
                outputs.mel[i, : int(n)],
                int(n),
                bool(outputs.stopped[i]),
                outputs.alignment[i, : -(-int(n) // r)],
            )
            for i, n in enumerate(outputs.lengths)
        ]

    @property
    def num_plots(self) -> int:
        return self.cfg.tts.plots
