#!/usr/bin/env bash
# kdflow vs torchdistill vs a bare PyTorch KD loop at GPU scale, then your own models on streamed
# image files, then the host work of one small step (each case under its own timeouts: at most 400 s,
# 300 s and 120 s; KDFLOW_GPU_CASES runs some of them).
#
# Full Fashion-MNIST (54,000 training images), batch 512, 5 epochs, teacher trained once on the
# GPU (cached under $KDFLOW_HOME/bench/methods/), every variant re-executed in its own process with
# the same allocator settings. Prints test accuracy, median epoch time and images/s per variant
# and the throughput ratios against the bare loop.
#
# Needs: a CUDA GPU, .venv (make install), Fashion-MNIST (apt-get install dataset-fashion-mnist),
# and, for the torchdistill variant, .venv-bench (see bench/README.md) or torchdistill 1.1.5 importable
# by the interpreter (skipped when neither).
# Usage: bench/gpu.sh [extra vs_torchdistill.py arguments]
#        KDFLOW_GPU_CASES="vs own steps" (the default: all three; any of them alone or together)
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
# Case 1 (at most 300 s, then a profile under 100 s). One teacher for the whole run: 10 epochs of
# cnn_medium on the full training split (16 s on an H200), then 2 rounds of 7 variants, each a process
# of 16-24 s (start-up, data and the test pass; 5 epochs take 2-3 s): about 270 s. No further
# accuracy seeds (--accuracy-seeds with none): on 2026-12-04 their default two seeds ran after the
# rounds and the 260-s limit cut the summary. That run found kdflow at 0.80x the bare loop's images/s
# (0.76x cached) with two settings the bare loop does not have: bfloat16 autocast (trainer.amp auto
# on a GPU; the bare loop computes in float32) and cuDNN's deterministic algorithms
# (trainer.deterministic). kdflow-cached-nd drops the second, the -fp32-nd variants both: the
# bare loop's arithmetic, so what is left between them is kdflow's own cost per step. The second
# H200 run (bench/README.md) found the cached pair at or above the bare loop and the online pair
# below it (0.77-0.83x); the profile then counts, per training step, the kernel launches, copies and
# synchronisations of the online bare loop and of kdflow with the same arithmetic.
status=0
cases=" ${KDFLOW_GPU_CASES:-vs own steps} "
if [[ $cases == *" vs "* ]]; then
work=$(mktemp -d)
common=(--device cuda --limit-train 0 --teacher-epochs 10 --batch-size 512 --lr 0.1 --threads 4 --workdir "$work" --accuracy-seeds)
timeout 300 "$PY" bench/vs_torchdistill.py "${common[@]}" --epochs 5 --rounds 2 \
  --variants bare kdflow kdflow-fp32-nd bare-cached kdflow-cached kdflow-cached-nd kdflow-cached-fp32-nd "$@" \
  || { status=$?; echo "vs_torchdistill.py: exit $status"; }
timeout 100 "$PY" bench/vs_torchdistill.py "${common[@]}" --epochs 2 --rounds 1 --profile 12 \
  --variants bare kdflow-fp32-nd || { s=$?; echo "vs_torchdistill.py --profile: exit $s"; status=$s; }
rm -rf "$work"
fi

# Case 2 (at most 300 s): your own models on streamed image files (bench/gpu_own_models.py):
# torchvision resnet50 -> mobilenet_v3_large at 224 px, 8,000 generated JPEGs (7,000 train of which
# 6,300 train the pipeline, 700 validate; 1,000 test), 15 DataLoader workers, batch 256, 2 epochs
# (the second measured): a bare PyTorch loop against kdflow with cache.mode cached and online.
# Estimate, not measured: resnet50 is ~4.1 GFLOP forward per 224-px image, mobilenet_v3_large ~0.22
# (x3 with the backward pass). Teacher training 2 x 7,000 x 12.3 GFLOP = 172 TFLOP; the bare KD loop
# 2 x 7,000 x (4.1 teacher in float32/TF32 + 0.66) = 67 TFLOP; the cache build 7,000 x 4.1 = 29 TFLOP;
# cached distillation 2 x 6,300 x 0.66 = 8 TFLOP; online 2 x 6,300 x 4.8 = 60 TFLOP; about 340 TFLOP,
# i.e. 10-30 s of GPU at 10-30 % of the H200's ~990 dense bf16 TFLOP/s (MobileNet's depthwise layers
# are memory-bound, the float32 teacher slower). The loader (15 workers, ~2-3 ms per 256-px JPEG
# decode + crop) gives ~5,000-7,000 images/s, above the models' rate. What dominates is start-up:
# five processes (torch import, CUDA init) and two pipeline runs (Prefect ephemeral server, MLflow
# store, DataLoader workers per stage). Measured on an H200 (2026-12-04): images and teacher 17 s,
# bare 27 s, kdflow-cached 91 s; the 200 s limit then stopped kdflow-online. The second H200 run
# (260 s) took 23 s, 32 s and 119 s for them and was stopped in kdflow-online again: it now runs
# before kdflow-cached, under 300 s.
if [[ $cases == *" own "* ]]; then
timeout 300 "$PY" bench/gpu_own_models.py --device cuda --images 8000 --image-size 224 \
  --epochs 2 --teacher-epochs 2 --batch-size 256 --workers 15 --variants bare kdflow-online kdflow-cached \
  || { s=$?; echo "gpu_own_models.py: exit $s"; status=$s; }
fi

# Case 3 (at most 120 s; no Fashion-MNIST, only kdcore's own dependencies): bench/step_overhead.py on
# the GPU. 8 x 8 inputs, cnn_tiny teacher and student, batch 16: a step is a few dozen small kernels,
# so its time is the host's (Python, dispatch, launches), as the 9k student's online step at batch
# 512 was in case 1 (4-6 ms a step against 2.0-2.3 ms of kernels). kdflow with the bare loop's
# arithmetic (float32, not deterministic) against the bare loop: microseconds, aten ops and kernel
# launches a step. On the CPU (2026-12-05) this step was 47 ops behind the bare loop, then 3.
if [[ $cases == *" steps "* ]]; then
timeout 120 "$PY" bench/step_overhead.py --device cuda --rounds 3 --epochs 2 \
  || { s=$?; echo "step_overhead.py: exit $s"; status=$s; }
fi
exit $status
