"""Chunked transcription of long recordings with a seq2seq model (Whisper, or one trained here).

The windows of each recording (or of each speech region) are decoded by
`jaxseq.inference.longform.decode_windows`, each as an utterance of its own (a Whisper window
padded to 30 s). Their token sequences are merged where consecutive windows agree
(`jaxseq.inference.merge`, the method of transformers' chunked Whisper pipeline), and the
regions' texts are joined. The text alone: timestamps need timestamp tokens, which this path
does not decode.
"""

from __future__ import annotations

import numpy as np

from jaxseq.inference.longform import decode_windows
from jaxseq.inference.merge import merge_overlapping
from jaxseq.train.trained import Trained


def seq2seq_transcribe_long(
    trained: Trained,
    waves: list[np.ndarray],
    *,
    decoder: str | None,
    beam_size: int | None,
    chunk_seconds: float = 0.0,
    stride_seconds: float = 0.0,
    vad: bool = False,
    batch_size: int = 32,
) -> list[str]:
    """Transcripts of float waveforms [samples] of any length at the model's sample rate
    (windows of `chunk_seconds`, default the longest bucket: 30 s for Whisper, overlapping by
    `stride_seconds` on each side, default a sixth of the window). A collective with several
    processes: every process calls it, with its own waveforms (any number, also none)."""
    task = trained.task
    options = task.eval_options(decoder=decoder, beam_size=beam_size)
    decoded = decode_windows(
        trained,
        waves,
        options=options,
        period=trained.frontend.hop_length,
        chunk_seconds=chunk_seconds,
        stride_seconds=stride_seconds,
        vad=vad,
        batch_size=batch_size,
    )
    texts = []
    for regions in decoded:
        parts = []
        for _, rows in regions:
            ids = [task.hypothesis_ids([x[None] for x in row])[0] for row in rows]
            parts.append(task.ids_to_text(np.asarray(merge_overlapping(ids), np.int64)))
        texts.append(" ".join(p for p in parts if p))
    return texts
