"""The shared part of long-form decoding: a recording's regions and windows, decoded in batches.

Each recording is decoded whole or, with VAD, a speech region at a time
(`jaxseq.audio.vad.speech_regions`); each region is cut into overlapping windows
(`jaxseq.inference.windows`); every window's features (log-mel, or a waveform model's
normalized samples: `jaxseq.evaluation.waveforms.features_of`) are computed on their own, as
the model saw utterances in training; and the windows of all recordings go through
`task.predict_fn` in batches, in lockstep over the processes. What a family does with its
windows' outputs (merge frames, merge tokens) is its own module's: `ctc_longform`,
`seq2seq_longform`.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from jaxseq.audio.vad import speech_regions
from jaxseq.config import frontend_settings, seconds_per_frame
from jaxseq.evaluation.waveforms import features_of, predicted_batches
from jaxseq.inference.windows import Window, region_windows, window_samples
from jaxseq.train.trained import Trained

# Per recording, per region: its windows and each window's predict_fn output row.
Decoded = list[list[tuple[list[Window], list[Any]]]]


def window_features(trained: Trained, audio: np.ndarray) -> np.ndarray:
    """A window's features (`features_of`: log-mel [frames, n_mels], or a waveform model's
    samples [samples]); a window shorter than `frontend.n_fft` (the last one, with strides of
    0), too short for one STFT frame, is padded with silence."""
    least = trained.frontend.n_fft
    if len(audio) < least:
        audio = np.pad(audio, (0, least - len(audio)))
    return features_of(trained, audio)


def decode_windows(
    trained: Trained,
    waves: list[np.ndarray],
    *,
    options: dict[str, Any],
    period: int,
    chunk_seconds: float,
    stride_seconds: float,
    vad: bool,
    batch_size: int,
) -> Decoded:
    """`task.predict_fn` over every window of float waveforms [samples] at the model's rate.

    Windows are `chunk_seconds` long (0: the longest `data.buckets` entry) and overlap by
    `stride_seconds` on each side (0: a sixth of the window), both whole multiples of `period`
    samples. `options` as `Task.eval_options` returns them. A collective with several
    processes: every process calls it, with its own waveforms (any number, also none).
    """
    rate = trained.frontend.sample_rate
    frame_seconds = seconds_per_frame(frontend_settings(trained.frontend))  # of data.buckets
    longest = round(trained.cfg.data.buckets[-1] * frame_seconds * rate)  # samples
    chunk, stride = window_samples(chunk_seconds, stride_seconds, longest, rate, period)
    plans = [
        region_windows(speech_regions(w, rate) if vad else [(0, len(w))], chunk, stride)
        for w in waves
    ]
    items = [(i, window) for i, regions in enumerate(plans) for plan in regions for window in plan]
    rows: list[Any] = []
    for batch in predicted_batches(
        trained,
        items,
        lambda item: window_features(trained, waves[item[0]][item[1].start : item[1].end]),
        batch_size=batch_size,
        options=options,
    ):
        count = len(jax.tree.leaves(batch)[0])
        rows += [jax.tree.map(lambda x, r=r: x[r], batch) for r in range(count)]
    decoded, done = [], 0
    for regions in plans:
        decoded.append([])
        for plan in regions:
            decoded[-1].append((plan, rows[done : done + len(plan)]))
            done += len(plan)
    return decoded
