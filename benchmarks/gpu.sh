#!/usr/bin/env bash
# The GPU check, one script for a machine with an NVIDIA GPU (a few minutes): the test suite with torch fits
# on CUDA, then the benchmarks with gmppl and the hand-written loops on the GPU (torch on "cuda"; JAX on its
# GPU backend when the jax CUDA plugin is installed, e.g. `pip install "jax[cuda12]"`, else on CPU).
#   bash benchmarks/gpu.sh [extra pytest args]      (from the repository root, after `make install`)
set -euo pipefail
PY=${PY:-.venv/bin/python}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
"$PY" -c "import torch; assert torch.cuda.is_available(), 'torch sees no CUDA device'; print('torch', torch.__version__, torch.cuda.get_device_name())"
if "$PY" -c "import jax, sys; sys.exit(0 if any(d.platform == 'gpu' for d in jax.devices()) else 1)" 2>/dev/null; then
  export JAX_PLATFORMS=cuda
  echo "JAX on GPU"
else
  echo "JAX has no GPU backend here: its cases run on CPU"
fi
# the suite: every test taking the `device` fixture fits on CUDA (the others run as on CPU)
"$PY" -m pytest -q -n 0 --device cuda "$@"
# two ranks on one GPU each when there are two (NCCL), else the gloo path on CPU
"$PY" -m pytest -q -n 0 tests/test_ddp.py
# the benchmarks: gmppl against its hand-written loops, both on the GPU
# (bench_vae and bench_gan still run their torch cases on CPU: their hand loops are not device-aware yet)
GMPPL_BENCH_GPU=1 "$PY" -m benchmarks --quick flow score flow_matching
