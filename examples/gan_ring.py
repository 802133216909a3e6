"""GANs on the 8-Gaussian ring and the 25-Gaussian grid, fitted with ``gm.inference.Adversarial``.

Targets with known modes: the ring (8 Gaussians on a circle of radius 2, std 0.02) and the grid
(25 Gaussians at ``{-4, -2, 0, 2, 4}^2``, std 0.05). For each of the divergences ``js``, ``kl``,
``reverse_kl`` (f-GAN) and ``w1`` (Wasserstein-1, gradient-penalised critic) a generator
``x = g(z)`` (ReLU MLP, 3 hidden layers of 256, ``z ~ N(0, I_2)``) is fitted on the backend's
default settings, ``Adversarial(name)`` (see `backend`), and judged by ``gm.metrics.mode_coverage``
on 2500 samples: modes captured (at least a fifth of the expected samples), the share of
high-quality samples (within 3 std of a mode) and the reverse KL of the mode histogram. Writes
``report.json``, ``report.md`` and a scatter PNG per target. With ``--chains C`` each fit restarts
``C`` times (``gm.fit(chains=C)``) and the restart with the smallest running estimate of its
divergence (the critic's bound, last 1000 steps) is the one judged; the report lists every restart.

Measured at the backend's earlier f-GAN defaults, Adam(2e-4, betas (0.5, 0.999)) for both players, and the
``w1`` defaults of that time (old rows, not the current defaults; NumPyro engine, batch 256, seed 0, one
chain unless said; CPU, 2 shared cores, the seconds include sharing the machine with another run):

    | target | divergence | steps | modes | high quality | reverse KL | seconds |
    |---|---|---:|---:|---:|---:|---:|
    | ring | js | 100000 | 8/8 | 99.0% | 0.002 | 458 |
    | ring | kl | 100000 | 8/8 | 99.4% | 0.002 | 352 |
    | ring | reverse_kl | 100000 | 6/8 | 99.0% | 0.289 | 352 |
    | ring | reverse_kl, ``--chains 4`` | 100000 | 8/8 (restart 2) | 98.9% | 0.006 | 1933 |
    | ring | w1 | 60000 | 8/8 | 98.9% | 0.002 | 1001 |
    | grid | js | 100000 | 25/25 | 98.6% | 0.005 | 467 |
    | grid | kl | 100000 | 25/25 | 97.4% | 0.006 | 357 |
    | grid | reverse_kl | 100000 | 25/25 | 98.1% | 0.010 | 353 |
    | grid | w1 | 60000 | 25/25 | 96.0% | 0.004 | 1013 |

At the f-GANs' current defaults (Adam(2e-3, betas (0.5, 0.9)), the critic at twice the rate) the
f-GANs get there far sooner: at 10000 steps on the ring, JS 8/8 modes (97.0% high quality), KL 8/8
(90.6%), reverse KL 4/8 (41.9%), where the earlier defaults had 0/8 (0%) for all three at 10000 steps.
With a smaller 2x128 generator (``--width 128 --depth 2 --steps 10000``, seed 0; "old w1" is
WGAN-GP's recipe, the previous ``w1`` default: Adam(1e-4, betas (0.5, 0.9)) for both players, five
critic steps; "w1" the current default: the f-GANs' Adam(2e-3) / critic Adam(4e-3), two critic steps; both
with the one-sided penalty, weight 10, and ``ema=0.999``):

    | target | divergence | NumPyro: modes, high quality | Pyro: modes, high quality |
    |---|---|---:|---:|
    | ring | js | 8/8, 96.1% | 8/8, 95.7% |
    | ring | kl | 8/8, 93.6% | 8/8, 87.1% |
    | ring | reverse_kl | 8/8, 96.1% | |
    | ring | old w1 | 8/8, 72.1% | |
    | ring | w1 | 8/8, 95.8% | 8/8, 95.2% |
    | grid | js | 25/25, 91.1% | 25/25, 93.8% |
    | grid | kl | 6/25, 14.3% | 25/25, 72.8% |
    | grid | reverse_kl | 17/25, 87.6% | 25/25, 93.8% |
    | grid | old w1 | 6/25, 18.6% | |
    | grid | w1 | 25/25, 84.4% | 25/25, 86.8% |

With seed 1, ``w1`` on NumPyro: ring 8/8, 96.2%, grid 25/25, 87.8%. On NumPyro the grid in 10000 steps is
still out of reach for KL and reverse KL; on Pyro (the same seed, but another initialisation and noise
stream) both found every mode, KL at 72.8% high quality, so at 10000 steps these grid fits depend on the
run (the f-GAN rows are at the f-GAN defaults). ``w1`` now captures every mode on both
targets and engines, but its grid samples stay a few points short of 90% high quality: a
continuous generator must put some mass between the modes, and the W1 critic's slope, capped at 1, pushes
that mass off less hard than JS's log-ratio critic.
What was tried for ``w1`` on the grid (NumPyro, seed 0, generator / critic learning rate, critic steps):

    | setting | modes | high quality |
    |---|---:|---:|
    | 5e-4 / 1e-3, 1 step | 17/25 | 33.4% |
    | 5e-4 / 1e-3, 3 steps | 16/25 | 38.5% |
    | 7e-4 / 2e-3, 2 steps | 22/25 | 59.3% |
    | 1e-3 / 2e-3, 1 step | 25/25 | 69.5% |
    | 1e-3 / 2e-3, 1 step, no averaging (``ema=0``) | 17/25 | 48.3% |
    | 1e-3 / 2e-3, 2 steps (seed 1) | 25/25 | 81.2% (77.0%) |
    | 1e-3 / 2e-3, 2 steps, penalty 1 | 25/25 | 71.8% |
    | 1e-3 / 2e-3, 2 steps, Adam beta1 = 0 | 25/25 | 80.7% |
    | 1e-3 / 2e-3, 2 steps, ``ema=0.9995`` | 25/25 | 80.9% |
    | 1e-3 / 2e-3, 2 steps, two-sided penalty | 0/25 | 1.6% |
    | 1e-3 / 2e-3, 3 steps | 25/25 | 77.4% |
    | 1e-3 / 2e-3, 5 steps | 21/25 | 47.8% |
    | 1.5e-3 / 3e-3, 2 steps (penalty 100) | 25/25 | 87.2% (86.5%) |
    | 2e-3 / 2e-3, 1 step | 1/25 | 8.1% |
    | 2e-3 / 4e-3, 1 step | 0/25 | 1.6% |
    | **2e-3 / 4e-3, 2 steps** (seed 1) | 25/25 | 84.4% (87.8%) |
    | 2e-3 / 4e-3, 2 steps, penalty 30 | 25/25 | 85.8% |
    | 2e-3 / 4e-3, 2 steps, penalty 100 (seed 1) | 25/25 | 88.7% (88.6%) |
    | 2e-3 / 4e-3, 3 steps | 25/25 | 78.8% |
    | 2e-3 / 6e-3, 2 steps, penalty 100 | 25/25 | 83.3% |
    | 2e-3 / 4e-3, 2 steps, ``lipschitz="spectral_norm"`` | 1/25 | 1.5% |
    | 2e-3 / 4e-3, 2 steps, a critic twice as wide (2x256) | 25/25 | 77.8% |
    | 2e-3 / 6e-3, 1 step, penalty 100 | 3/25 | 8.5% |
    | 2e-3 / 4e-3, 2 steps, Adam beta1 = 0 | 25/25 | 84.5% |

Penalty 100 was a point or two better on NumPyro and on Pyro (87.7% against 86.8% on the grid, 94.9% against
95.2% on the ring), inside the seed-to-seed spread, so the weight stays at WGAN-GP's 10. Over five seeds
(0-4) on the current code, the grid at the defaults gave 89.2%, 85.6%, 87.4%, 84.5%, 87.4% (mean 86.8%, every
mode each time) and at penalty 100 88.7%, 86.1%, 88.1%, 89.5%, 89.1% (mean 88.3%); no run reached 90%. Seed 0
at the defaults gave 84.4% on the code of the table above and 89.2% now: the two versions of the JAX loop
differ in the last bit of the loss from step 5 on, and 10000 steps carry that apart, so a single run of
these fits is uncertain by about 3 points.

Reverse KL is mode seeking (``docs/design.md``, "Divergences and latent variables"): a generator
that has put its mass on 6 of the 8 ring modes sits at a local minimum (``D = log(8/6) = 0.29`` for
a perfect fit of those six, and no gradient reaches an empty mode). The four restarts reached 6, 3,
8 and 3 modes, and their running divergence estimates (0.38, 1.60, 0.018, 1.11) rank them in exactly
that order, so picking the smallest estimate picks the restart with every mode, as the 1-D restart
test does for the global minimiser. On the grid the single chain already holds all 25.

What made the difference (measured with a plain-JAX copy of the backend's step, grid, 3x256):

* **steps.** The f-GANs find every grid mode around 15000-25000 steps and then sharpen them: JS
  64% high quality at 15000, 82% at 20000, 94% at 30000, 96% at 45000; forward KL 82% at 36000,
  88% at 48000, 95% at 72000. The old 20000-step budget stopped half-way.
* **the averaged generator** (``Adversarial(ema=0.999)``, the default now): one to two points for the
  f-GANs, and for ``w1`` on the ring 77.5% -> 92.7% at 12000 steps. The table's JS grid fit is
  at 98.6%; its last iterate (the run with the same seed, without averaging) was at 88.5%.
* **the one-sided gradient penalty for ``w1``** (the default now; see ``gmppl.inference.adversarial``):
  with WGAN-GP's two-sided penalty the 3x256 generator stayed off the ring (0/8 modes after 20000
  steps), and a 2x128 generator reached only 10/25 grid modes; one-sided, 8/8 within 6000 steps.
* **not**: cosine learning-rate decay (slower: 11/25 modes at 20000 steps against 15/25 at a constant
  rate, in an early run with a 0.01-slope critic), scaling the
  generator's output to the data's spread (1/25 at 24000 steps), a smaller 2x128 generator (it
  folds the plane into lines through the modes: 9/25 for JS at 20000 steps).

    python examples/gan_ring.py --engine numpyro --out out/gan_ring            # 100000 steps per fit
    python examples/gan_ring.py --divergences reverse_kl --targets ring --chains 4
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
    """The backend on its default settings: f-GANs one critic step, Adam(2e-3, betas (0.5, 0.9)) for the
    generator and twice that rate for the critic, the saddle generator loss; ``w1`` the same optimiser pair,
    two critic steps and the one-sided gradient penalty, weight 10; the default critic, 2x128 leaky ReLU;
    the generator averaged over its iterates (``ema=0.999``)."""
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
    p.add_argument("--steps", type=int, default=100000)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--width", type=int, default=256, help="generator hidden width")
    p.add_argument("--depth", type=int, default=3, help="generator hidden layers")
    p.add_argument("--n-eval", type=int, default=2500)
    p.add_argument("--divergences", default=",".join(DIVERGENCES))
    p.add_argument("--targets", default="ring,grid")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--chains",
        type=int,
        default=1,
        help="restarts per fit (gm.fit(chains=C)); the chain with the smallest estimated divergence is judged",
    )
    p.add_argument("--out", default="out/gan_ring")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    report: dict = {"engine": args.engine, "steps": args.steps, "results": {}}
    lines = [
        f"GANs on mixtures ({args.engine}, {args.steps} steps, batch {args.batch_size}, {args.n_eval} samples)",
        "",
        "| target | divergence | generator | modes | high quality | reverse KL | seconds |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for target in args.targets.split(","):
        x, centres, std = {"ring": ring, "grid": grid}[target](50_000, args.seed)
        panels = {}
        for name in args.divergences.split(","):
            depth, width = args.depth, args.width
            t0 = time.perf_counter()
            fit = gm.fit(
                generator(args.engine, width, args.seed, depth),
                x,
                backend(name),
                steps=args.steps,
                batch_size=args.batch_size,
                seed=args.seed,
                progress=False,
                chains=args.chains,
            )
            seconds = time.perf_counter() - t0
            # the restart whose running estimate of the divergence (last 1000 steps) is smallest
            estimate = np.atleast_2d(fit.history["divergence"])[:, -1000:].mean(1)
            best = int(np.argmin(estimate))
            every = [
                gm.metrics.mode_coverage(fit.sample(args.n_eval, seed=args.seed + 1, chain=c), centres, std)
                for c in range(fit.chains)
            ]
            s = np.asarray(gm._data.to_numpy(fit.sample(args.n_eval, seed=args.seed + 1, chain=best)))
            m = every[best]
            panels[name] = s
            report["results"][f"{target}/{name}"] = {
                "generator": [depth, width],
                "modes": m.modes,
                "num_modes": m.num_modes,
                "high_quality": m.high_quality,
                "reverse_kl": m.reverse_kl,
                "seconds": seconds,
                "divergence_estimate": estimate.tolist(),
                "chain": best,
                "every_chain": [[e.modes, e.high_quality] for e in every],
            }
            chains = "" if fit.chains == 1 else f" (chain {best} of {fit.chains})"
            lines.append(
                f"| {target} | {name}{chains} | {depth}x{width} | {m.modes}/{m.num_modes} | "
                f"{100 * m.high_quality:.1f}% | {m.reverse_kl:.3f} | {seconds:.0f} |"
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
