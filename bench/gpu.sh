#!/usr/bin/env bash
# kdflow vs torchdistill vs a bare PyTorch KD loop at GPU scale, in one go (about 5-8 minutes).
#
# Full Fashion-MNIST (54,000 training images), batch 512, 5 epochs, teacher trained once on the
# GPU (cached under $KDFLOW_HOME/bench/methods/), every variant re-executed in its own process with
# the same allocator settings. Prints test accuracy, median epoch time and images/s per variant
# and the throughput ratios against the bare loop.
#
# Needs: a CUDA GPU, .venv (make install), Fashion-MNIST (apt-get install dataset-fashion-mnist),
# and, for the torchdistill variant, .venv-bench (see bench/README.md; skipped when missing).
# Usage: bench/gpu.sh [extra vs_torchdistill.py arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
[ -x "$PY" ] || PY=python3
if ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "bench/gpu.sh: no CUDA device visible to torch; nothing run" >&2
  exit 1
fi
"$PY" -c 'import torch; p = torch.cuda.get_device_properties(0); print(f"GPU: {p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}")'
export PYTHONUNBUFFERED=1
# One teacher for the whole run: 10 epochs of cnn_medium on the full training split.
exec timeout 480 "$PY" bench/vs_torchdistill.py \
  --device cuda --limit-train 0 --teacher-epochs 10 \
  --epochs 5 --batch-size 512 --lr 0.1 --threads 4 \
  --variants bare kdflow torchdistill bare-cached kdflow-cached "$@"
