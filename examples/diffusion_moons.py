"""A score-based diffusion model of two moons, fitted by denoising score matching (``gm.inference.Score``).

Reports sample quality against held-out data (Wasserstein-1 and MMD^2, from ``gmppl.divergences``),
the held-out probability-flow-ODE log-likelihood in nats, the score-evaluation cost of the
Euler–Maruyama and adaptive ODE samplers, and writes PNGs of samples and of the reverse trajectory.

    python examples/diffusion_moons.py --engine pyro --steps 4000 --out out/diffusion_moons
    python examples/diffusion_moons.py --engine numpyro --steps 4000
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

import gmppl as gm


def moons(n: int, seed: int) -> np.ndarray:
    from sklearn.datasets import make_moons

    return make_moons(n, noise=0.05, random_state=seed)[0].astype(np.float32)


def build_model(engine: str, width: int) -> Any:
    """``x ~ Diffusion(s_theta, "vp")`` inside ``plate("data")``, with the default score MLP."""
    if engine == "pyro":
        import pyro

        s = gm.models.ScoreMLP(2, width=width)

        def model(x: Any = None, n: int | None = None) -> None:
            net = pyro.module("score", s)
            with pyro.plate("data", x.shape[0] if x is not None else n):
                pyro.sample("x", gm.models.Diffusion(net, sde="vp"), obs=x)

        return model
    import jax
    import numpyro
    from numpyro.contrib.module import eqx_module

    e = gm.models.ScoreMLP(2, width=width, key=jax.random.PRNGKey(0))

    def model(x: Any = None, n: int | None = None) -> None:
        net = eqx_module("score", e)
        with numpyro.plate("data", x.shape[0] if x is not None else n):
            numpyro.sample("x", gm.models.Diffusion(net, sde="vp"), obs=x)

    return model


def diffusion_of(fit: gm.Fit, x: np.ndarray) -> Any:
    """The fitted ``Diffusion`` (its network carries the trained weights)."""
    from gmppl.models.diffusion import find_diffusion

    p = fit.program
    if fit.engine == "pyro":
        fit.write_back()  # a fit leaves the caller's module as it was: write the fitted weights into it
        return find_diffusion(p.trace(x=p.as_array(x)).nodes["x"]["fn"])
    import jax

    return find_diffusion(p.trace(p.params, jax.random.PRNGKey(0), x=p.as_array(x))["x"]["fn"])


def generate(d: Any, engine: str, n: int, sampler: str, seed: int, record: int = 0) -> tuple[np.ndarray, dict]:
    if engine == "pyro":
        import torch

        torch.manual_seed(seed)
        with torch.no_grad():
            x, info = d.generate(n, sampler=sampler, record=record)
        traj = [t.cpu().numpy() for t in info["trajectory"]]
        return x.cpu().numpy(), {"nfe": int(info["nfe"]), "trajectory": traj}
    import jax

    x, info = jax.jit(lambda k: d.generate(k, n, sampler=sampler, record=record))(jax.random.PRNGKey(seed))
    traj = [] if info["trajectory"] is None else list(np.asarray(info["trajectory"]))
    return np.asarray(x), {"nfe": int(info["nfe"]), "trajectory": traj}


def plot(out: Path, x_test: np.ndarray, samples: np.ndarray, trajectory: list[np.ndarray]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(8, 4), sharex=True, sharey=True)
    ax[0].scatter(*x_test.T, s=3)
    ax[0].set_title("held-out data")
    ax[1].scatter(*samples.T, s=3, color="C1")
    ax[1].set_title("diffusion samples (Euler-Maruyama)")
    fig.savefig(out / "samples.png", dpi=100)
    plt.close(fig)
    k = len(trajectory)
    fig, ax = plt.subplots(1, k, figsize=(2.5 * k, 2.6), sharex=True, sharey=True)
    for i, (a, xs) in enumerate(zip(np.atleast_1d(ax), trajectory, strict=True)):
        a.scatter(*xs.T, s=2)
        a.set_title(f"t = {1 - i / max(k - 1, 1):.2f}")
        a.set_xlim(-3, 3)
        a.set_ylim(-3, 3)
    fig.savefig(out / "trajectory.png", dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", choices=["pyro", "numpyro"], default="pyro")
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--out", type=Path, default=Path("out/diffusion_moons"))
    ap.add_argument("--n-eval", type=int, default=500, help="held-out points and samples for W1/MMD")
    ap.add_argument("--n-loglik", type=int, default=200, help="held-out points for the ODE log-likelihood")
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    x_train, x_test = moons(4000, args.seed), moons(max(args.n_eval, args.n_loglik), args.seed + 1)
    t0 = time.perf_counter()
    fit = gm.fit(
        build_model(args.engine, args.width),
        x_train,
        gm.inference.Score(),
        steps=args.steps,
        batch_size=256,
        seed=args.seed,
        optim=gm.optim.Adam(lr=2e-3),
        progress=False,
    )
    train_s = time.perf_counter() - t0
    d = diffusion_of(fit, x_test[:8])
    held = x_test[: args.n_eval]
    w1, mmd = gm.divergences.Wasserstein1(num_bootstrap=5), gm.divergences.MMD()
    report: dict = {"engine": args.engine, "steps": args.steps, "train_seconds": round(train_s, 2)}
    traj = []
    for sampler in ("em", "ode"):
        t0 = time.perf_counter()
        xs, info = generate(d, args.engine, args.n_eval, sampler, args.seed, record=6 if sampler == "em" else 0)
        wall = time.perf_counter() - t0
        e = w1(xs, held)
        report[sampler] = {
            "w1": round(float(e), 4),
            "w1_stderr": round(e.stderr, 4),
            "mmd2": round(float(mmd(xs, held)), 5),
            "score_evals": info["nfe"],
            "seconds": round(wall, 2),
        }
        if sampler == "em":
            samples, traj = xs, info["trajectory"]
    t0 = time.perf_counter()
    lp = np.asarray(fit.log_prob(x_test[: args.n_loglik]), dtype=np.float64)
    report["heldout_loglik_nats"] = round(float(lp.mean()), 4)
    report["heldout_loglik_stderr"] = round(float(lp.std(ddof=1) / np.sqrt(len(lp))), 4)
    report["loglik_seconds"] = round(time.perf_counter() - t0, 2)
    report["w1_floor_data_vs_data"] = round(float(w1(moons(args.n_eval, args.seed + 7), held)), 4)
    plot(args.out, held, samples, traj)
    (args.out / "report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
