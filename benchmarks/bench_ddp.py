"""Data-parallel scaling of a Pyro fit: one process against ``torchrun --nproc-per-node=2`` (gloo, one thread
per process), the same compute-bound fit — an affine-coupling flow by Likelihood on a global batch of
16384 — timed in its steady state inside the worker processes (start-up and the first steps excluded)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.harness import Case

TITLE = "data-parallel Pyro (torchrun, CPU): steady-state steps/s, 1 vs 2 processes"
ROOT = Path(__file__).resolve().parent.parent
BATCH = 16384


def _worker(steps: int) -> None:
    """Fit ``steps`` steps after 5 warm-up steps; rank 0 prints the seconds the timed steps took."""
    import gmppl as gm
    from gmppl.models import zoo

    x = gm.datasets.moons(BATCH)
    model = zoo.flow(2, kind="affine", layers=4, hidden=(128, 128))
    kw = {"batch_size": BATCH, "seed": 0, "progress": False}
    gm.fit(model, x, gm.inference.Likelihood(), steps=5, **kw)
    t0 = time.perf_counter()
    gm.fit(model, x, gm.inference.Likelihood(), steps=steps, **kw)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"SECONDS {time.perf_counter() - t0}")


def _launch(procs: int, steps: int) -> tuple[None, float]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu", "OMP_NUM_THREADS": "1"}
    worker = [str(Path(__file__).resolve()), "--worker", str(steps)]
    if procs == 1:
        cmd = [sys.executable, *worker]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}", *worker]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
    if res.returncode != 0:
        raise RuntimeError(res.stderr[-2000:])
    line = next(s for s in res.stdout.splitlines() if s.startswith("SECONDS"))
    return None, float(line.split()[1])


def cases(quick: bool) -> list[Case]:
    steps = 5 if quick else 30
    return [
        Case("1 process", lambda s: _launch(1, s), steps, warmup=1),
        Case("torchrun x2", lambda s: _launch(2, s), steps, warmup=1, baseline="1 process"),
    ]


if __name__ == "__main__" and sys.argv[1:2] == ["--worker"]:
    _worker(int(sys.argv[2]))
