"""Run by ``test_ddp.py`` under ``torchrun --nproc-per-node=2``: each case fits on every rank, and rank ``r``
writes the fitted parameters to ``OUT/<case>-rank<r>.npz`` (a refused setting writes its message)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

import gmppl as gm
from gmppl.models import zoo

STEPS = {"likelihood": 300, "elbo": 60, "adversarial": 60, "score": 60}


def case(name: str, steps: int | None = None, **kw: object) -> gm.Fit:
    """The fits compared with one process: a flow by Likelihood (no noise: the same parameters up to
    reduction order), a VAE, a GAN with a gradient penalty and a diffusion (per-rank noise)."""
    x = gm.datasets.moons(1024)
    model, backend = {
        "likelihood": (lambda: zoo.flow(2, kind="affine", layers=2, hidden=(16,)), gm.inference.Likelihood),
        "elbo": (lambda: zoo.vae(2, latent_dim=2), gm.inference.ELBO),
        "adversarial": (lambda: zoo.gan(2, latent_dim=2), lambda: gm.inference.Adversarial("w1")),
        "score": (lambda: zoo.diffusion(2, width=32, depth=2), gm.inference.Score),
    }[name]
    return gm.fit(model(), x, backend(), steps=steps or STEPS[name], batch_size=512, seed=0, progress=False, **kw)


def main(out: Path) -> None:
    import torch.distributed as dist

    for name in STEPS:
        fit = case(name)
        np.savez(out / f"{name}-rank{dist.get_rank() if dist.is_initialized() else 0}.npz", **fit.params)
    rank = dist.get_rank()
    # a checkpointed fit stopped half-way and resumed on the same two ranks is bitwise the whole one
    whole = case("elbo", 40)
    case("elbo", 20, checkpoint=out / "ck", checkpoint_every=10)
    resumed = case("elbo", 40, checkpoint=out / "ck", checkpoint_every=10, resume=True)
    same = all(np.array_equal(whole.params[k], resumed.params[k]) for k in whole.params)
    (out / f"resume-rank{rank}.txt").write_text(str(same))
    fit = case("likelihood", 5)
    fit.save(out / "saved")  # rank 0 writes, rank 1 does not race it
    try:
        gm.fit(zoo.vae(2, latent_dim=2), gm.datasets.moons(64), gm.inference.ELBO(), steps=1, batch_size=63)
    except gm.DeviceError as e:
        (out / f"refused-rank{rank}.txt").write_text(str(e))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
