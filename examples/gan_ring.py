"""GANs on the 8-Gaussian ring and the 25-Gaussian grid, fitted with ``gm.inference.Adversarial``.

Targets with known modes: the ring (8 Gaussians on a circle of radius 2, std 0.02) and the grid
(25 Gaussians at ``{-4, -2, 0, 2, 4}^2``, std 0.05). For each of the divergences ``js``, ``kl``,
``reverse_kl`` (f-GAN) and ``w1`` (WGAN-GP) a generator ``x = g(z)`` (ReLU MLP, 3 hidden layers of 256 by default, ``z ~ N(0, I_2)``)
is fitted and judged by ``gm.metrics.mode_coverage`` on 2500 samples: modes captured (at least a
fifth of the expected samples), the share of high-quality samples (within 3 std of a mode) and the
reverse KL of the mode histogram. Writes ``report.json``, ``report.md`` and a scatter PNG per
target. Every fit uses ``Adversarial(name)`` on its default settings (see `backend`).

Measured (NumPyro engine, 20000 steps, batch 256, 2500 samples, seed 0; CPU, 2 shared cores), with
the default 3x256 generator and, in the last column, a 2x128 one (``--width 128 --depth 2``):

    | target | divergence | modes | high quality | reverse KL | 2x128: modes, HQ |
    |---|---|---:|---:|---:|---:|
    | ring | js | 8/8 | 92.7% | 0.005 | 8/8, 90.2% |
    | ring | kl | 8/8 | 79.8% | 0.011 | 8/8, 60.0% |
    | ring | reverse_kl | 7/8 | 91.3% | 0.159 | 6/8, 95.0% |
    | ring | w1 | 0/8 | 0.1% | 1.443 | 8/8, 82.5% |
    | grid | js | 24/25 | 78.2% | 0.033 | 9/25, 40.8% |
    | grid | kl | 24/25 | 56.9% | 0.067 | 2/25, 7.9% |
    | grid | reverse_kl | 24/25 | 79.4% | 0.072 | 5/25, 55.7% |
    | grid | w1 | 0/25 | 1.4% | 0.983 | 10/25, 26.3% |

The issue's target (all modes and >= 90% high quality, for js, kl, reverse_kl and w1) is met by JS
on the ring only; the f-GANs come close on the grid (24/25) with the deeper generator, which is the
lever that mattered (the 2x128 generator folds the plane into lines through the grid's modes). Forward
KL keeps mass between modes (its mode-covering minimiser), reverse KL drops modes first (mode
seeking), as the seed describes. WGAN-GP (five critic steps, Adam(1e-4, (0.5, 0.9)), penalty 10)
works with the 2x128 generator but did not converge with the 3x256 one in 20000 steps (samples a
broad offset disc, also at lr 5e-5: 0/8; ``--width 128 --depth 2`` for w1). Settings tried at 10000 steps with the 2x128
generator: the nonsaturating generator loss collapsed KL (0/8) and sent reverse KL to NaN; 3 critic
steps collapsed KL and gave reverse KL 6/8 88.5%; lr 5e-4 helped grid JS (13/25 at 10k, 20/25 77%
at 20k) but cost ring reverse KL (2/8). None was better across the board, so the backend's f-GAN
defaults stand; the GAN papers that reach 25/25 also run ~100k steps.

    python examples/gan_ring.py --engine numpyro --steps 20000 --out out/gan_ring
    python examples/gan_ring.py --engine pyro --steps 20000
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

import gmppl as gm

DIVERGENCES = ("js", "kl", "reverse_kl", "w1")


def ring(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, float]:
    """``n`` draws of the 8-Gaussian ring (radius 2, std 0.02), its centres and std."""
    a = 2 * np.pi * np.arange(8) / 8
    centres = 2.0 * np.stack([np.cos(a), np.sin(a)], 1)
    return _mixture(centres, 0.02, n, seed), centres, 0.02


def grid(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, float]:
    """``n`` draws of the 25-Gaussian grid on ``{-4, -2, 0, 2, 4}^2`` (std 0.05), its centres and std."""
    g = np.arange(-4.0, 5.0, 2.0)
    centres = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
    return _mixture(centres, 0.05, n, seed), centres, 0.05


def _mixture(centres: np.ndarray, std: float, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    k = rng.integers(0, len(centres), n)
    return (centres[k] + std * rng.normal(size=(n, 2))).astype(np.float32)


def generator(engine: str, width: int, seed: int, depth: int = 3) -> Any:
    """The program ``z ~ N(0, I_2)``, ``x = g(z)`` (deterministic site) with an MLP ``g``."""
    if engine == "pyro":
        import pyro
        import pyro.distributions as dist
        import torch

        torch.manual_seed(seed)
        g = gm.models.nets.torch_mlp(2, 2, width=width, depth=depth, activation="relu")

        def model(x: Any = None, n: int | None = None) -> None:
            net = pyro.module("g", g)
            with pyro.plate("data", x.shape[0] if x is not None else n):
                z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
                pyro.deterministic("x", net(z), event_dim=1)

        return model
    import jax
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist
    from numpyro.contrib.module import eqx_module

    e = gm.models.nets.eqx_mlp(2, 2, width=width, depth=depth, activation="relu", key=jax.random.PRNGKey(seed))

    def model(x: Any = None, n: int | None = None) -> None:
        net = eqx_module("g", e)
        with numpyro.plate("data", x.shape[0] if x is not None else n):
            z = numpyro.sample("z", dist.Normal(jnp.zeros(2), 1.0).to_event(1))
            numpyro.deterministic("x", jax.vmap(net)(z))

    return model


def backend(name: str) -> gm.inference.Adversarial:
    """The backend on its default settings: f-GANs one critic step, Adam(2e-4, betas (0.5, 0.999)) for
    both players, the saddle generator loss; ``w1`` WGAN-GP's five critic steps, Adam(1e-4, betas
    (0.5, 0.9)) and gradient penalty 10 (Gulrajani et al. 2017); the default critic, 2x128 leaky ReLU."""
    return gm.inference.Adversarial(name)


def scatter(path: Path, title: str, data: np.ndarray, panels: dict[str, np.ndarray], lim: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(3 * (len(panels) + 1), 3.2))
    for ax, (name, pts) in zip(axes, {"data": data, **panels}.items(), strict=True):
        ax.scatter(pts[:, 0], pts[:, 1], s=1, alpha=0.4)
        ax.set(xlim=(-lim, lim), ylim=(-lim, lim), title=name, aspect="equal", xticks=[], yticks=[])
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--engine", choices=["pyro", "numpyro"], default="numpyro")
    p.add_argument("--steps", type=int, default=20000)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--width", type=int, default=256, help="generator hidden width")
    p.add_argument("--depth", type=int, default=3, help="generator hidden layers")
    p.add_argument("--n-eval", type=int, default=2500)
    p.add_argument("--divergences", default=",".join(DIVERGENCES))
    p.add_argument("--targets", default="ring,grid")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="out/gan_ring")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    report: dict = {"engine": args.engine, "steps": args.steps, "generator": [args.depth, args.width], "results": {}}
    lines = [
        f"GANs on mixtures ({args.engine}, generator {args.depth}x{args.width}, {args.steps} steps, "
        f"batch {args.batch_size}, {args.n_eval} samples)",
        "",
        "| target | divergence | modes | high quality | reverse KL | seconds |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for target in args.targets.split(","):
        x, centres, std = {"ring": ring, "grid": grid}[target](50_000, args.seed)
        panels = {}
        for name in args.divergences.split(","):
            t0 = time.perf_counter()
            fit = gm.fit(
                generator(args.engine, args.width, args.seed, args.depth),
                x,
                backend(name),
                steps=args.steps,
                batch_size=args.batch_size,
                seed=args.seed,
                progress=False,
            )
            seconds = time.perf_counter() - t0
            s = np.asarray(gm._data.to_numpy(fit.sample(args.n_eval, seed=args.seed + 1)))
            m = gm.metrics.mode_coverage(s, centres, std)
            panels[name] = s
            report["results"][f"{target}/{name}"] = {
                "modes": m.modes,
                "num_modes": m.num_modes,
                "high_quality": m.high_quality,
                "reverse_kl": m.reverse_kl,
                "seconds": seconds,
                "final_divergence_estimate": float(np.mean(fit.history["divergence"][-100:])),
            }
            lines.append(
                f"| {target} | {name} | {m.modes}/{m.num_modes} | {100 * m.high_quality:.1f}% | "
                f"{m.reverse_kl:.3f} | {seconds:.0f} |"
            )
            print(lines[-1], flush=True)
        scatter(
            out / f"{target}.png",
            f"{target}: data and generated samples",
            x[: args.n_eval],
            panels,
            lim=2.6 if target == "ring" else 5.2,
        )
    (out / "report.md").write_text("\n".join(lines) + "\n")
    (out / "report.json").write_text(json.dumps(report, indent=2))
    print("\n".join(lines))
    return report


if __name__ == "__main__":
    main()
