#!/usr/bin/env bash
# The GPU benchmarks of docs/benchmarks.md in one go, for a machine with an NVIDIA GPU:
#   - one training step of whisper-base dimensions in bf16, jaxseq vs transformers (step time,
#     samples/s, and jaxseq's TFLOP/s and MFU from the compiled step's FLOPs);
#   - beam search vs transformers' generate (whisper-tiny dimensions);
#   - the CTC loss vs optax.ctc_loss;
#   - log-mel of 30 s clips: jaxseq's front-end (NumPy, the CPU, as `prepare` runs it) vs
#     openai-whisper's torch log_mel_spectrogram on the GPU.
# Usage: scripts/bench_gpu.sh [PYTHON]   (default: .venv/bin/python; jax with CUDA, torch with
# CUDA, transformers and jaxseq's own requirements must be importable by it)
set -euo pipefail
cd "$(dirname "$0")/.."
py="${1:-.venv/bin/python}"
export HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
echo "## train step, whisper-base dims, bf16"
"$py" scripts/bench_train_step.py --device gpu --size base --dtype bfloat16 --batch 16 --steps 10
echo "## train step, whisper-tiny dims, fp32 (the CPU benchmark's shapes)"
"$py" scripts/bench_train_step.py --device gpu --steps 10
echo "## beam search"
"$py" scripts/bench_beam_search.py --device gpu --runs 5
echo "## CTC loss"
"$py" scripts/bench_ctc_loss.py --device gpu --runs 50
echo "## log-mel, 16 clips of 30 s"
"$py" - <<'PY'
import statistics, time
import numpy as np, torch, whisper
from jaxseq.audio.frontend import log_mel_numpy
from jaxseq.config import FrontendConfig
clips = np.random.default_rng(0).standard_normal((16, 480000)).astype(np.float32) * 0.1
def timed(fn, runs=5):
    fn(); out = []
    for _ in range(runs):
        t = time.perf_counter(); fn(); out.append(time.perf_counter() - t)
    return statistics.median(out) * 1e3
cfg = FrontendConfig()
ours = timed(lambda: [log_mel_numpy(c, cfg) for c in clips])
gpu = torch.from_numpy(clips).cuda()
def theirs():
    whisper.log_mel_spectrogram(gpu, 80); torch.cuda.synchronize()
ref = timed(theirs)
print(f"| jaxseq log_mel (NumPy, CPU) | {ours:.1f} ms |\n| openai-whisper (torch, GPU) | {ref:.1f} ms |")
PY
