"""A checkpointed fit run as its own process by ``test_checkpoint.py`` (killed mid-fit, then resumed)."""

from __future__ import annotations

import sys
from pathlib import Path

import gmppl as gm

STEPS = 2000


def run(directory: Path | None, steps: int, *, resume: bool = False) -> gm.Fit:
    from test_fit import pyro_gauss

    x = gm.datasets.moons(512)
    kw = {} if directory is None else {"checkpoint": directory, "checkpoint_every": 5, "resume": resume}
    return gm.fit(pyro_gauss(), x, steps=steps, batch_size=64, seed=7, progress=False, **kw)


if __name__ == "__main__":
    run(Path(sys.argv[1]), STEPS)
