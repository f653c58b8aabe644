"""Run by tests/test_whisper_sequential.py as 2 processes (1 CPU device each): sequential
long-form transcription of a converted Whisper workdir, each process with its own recordings,
as many as `RECORDINGS[process]` lists (process 0 two, process 1 one of another length), so
that the processes run different numbers of windows and every jitted call must still run on
both. Process 0's recordings and options are those of the test's two-row single-process run
(test_recordings_decode_together_as_alone), its reference. Writes OUT/result-p<i>.json (each
process its results).

    python tests/whisper_sequential_run.py OUT WORKDIR PORT NUM_PROCESSES ID
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

RATE = 16000
OPTIONS = dict(
    temperatures=(0.0,),
    compression_ratio_threshold=None,
    logprob_threshold=None,
    no_speech_threshold=None,
    condition_on_previous_text=False,
)
RECORDINGS = {0: [(70, 0), (45, 1)], 1: [(12, 3)]}  # per process: (seconds, seed)


def recording(seconds: int, seed: int) -> np.ndarray:
    """Noise and a 440 Hz tone at a random loudness each second, a third of the seconds
    silent."""
    rng = np.random.default_rng(seed)
    t = np.arange(seconds * RATE) / RATE
    loud = rng.uniform(0, 0.3, seconds) * (rng.uniform(0, 1, seconds) > 0.3)
    amp = np.repeat(loud, RATE)
    noise = rng.normal(0, 1, len(t)) * amp + 0.2 * np.sin(2 * np.pi * 440 * t) * amp
    return noise.astype(np.float32)


def main(out: Path, workdir: str) -> None:
    import jax

    from jaxseq.inference.whisper_sequential import sequential_transcribe
    from jaxseq.train.trained import load_trained

    p = jax.process_index()
    trained = load_trained(workdir)
    waves = [recording(*r) for r in RECORDINGS[p]]
    results = sequential_transcribe(trained, waves, **OPTIONS)
    (out / f"result-p{p}.json").write_text(json.dumps(results))


if __name__ == "__main__":
    from jaxseq.parallel.distributed import initialize

    out_dir, workdir_path = Path(sys.argv[1]), sys.argv[2]
    port, count, index = sys.argv[3:6]
    initialize(f"127.0.0.1:{port}", int(count), int(index))
    main(out_dir, workdir_path)
