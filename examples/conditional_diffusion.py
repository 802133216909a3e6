"""A class-conditional diffusion model of two moons, ``x | y`` with ``y`` the moon, fitted by denoising score matching.

The program computes the context ``c = one_hot(y)`` from its input ``y`` and observes
``x ~ gm.models.Diffusion(s_theta, sde="vp", context=c)``; the data go to ``gm.fit`` as ``{"x": x, "y": y}``
and ``gm.inference.Score(guidance_dropout=0.1)`` trains the network on ``s_theta(x_t, t, c)`` with one
context in ten replaced by the null context (zeros), so it also learns the unconditional score for
classifier-free guidance.

Reports, per class: sample quality (Wasserstein-1 between samples given ``y`` and held-out ``x | y``, beside
the data-vs-data floor) for the unguided sampler and the guided one (``--guidance w``, which sharpens
``p(x | y)`` rather than sampling it); the held-out probability-flow-ODE log-likelihood ``log p(x | y)`` in
nats and, for contrast, the median of ``log p(x | wrong y)`` and the accuracy of classifying held-out points by
``argmax_y log p(x | y)``; writes a PNG of samples per class.

    python examples/conditional_diffusion.py --engine pyro --steps 4000 --out out/conditional_diffusion
    python examples/conditional_diffusion.py --engine numpyro --steps 4000
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

import gmppl as gm

CLASSES = 2


def labelled_moons(n: int, seed: int) -> dict[str, np.ndarray]:
    """``{"x": points (n, 2), "y": moon label (n,)}``."""
    from sklearn.datasets import make_moons

    x, y = make_moons(n, noise=0.05, random_state=seed)
    return {"x": x.astype(np.float32), "y": y.astype(np.int64)}


def build_model(engine: str, width: int) -> Any:
    """``x | y ~ Diffusion(s_theta, "vp", context=one_hot(y))`` in a plate over the rows."""
    if engine == "pyro":
        import pyro
        import torch

        s = gm.models.ScoreMLP(2, width=width, context_dim=CLASSES)

        def model(x: Any = None, y: Any = None) -> None:
            net = pyro.module("score", s)
            with pyro.plate("data", y.shape[0]):
                c = torch.nn.functional.one_hot(y, CLASSES).float()
                pyro.sample("x", gm.models.Diffusion(net, sde="vp", context=c), obs=x)

        return model
    import jax
    import numpyro
    from numpyro.contrib.module import eqx_module

    e = gm.models.ScoreMLP(2, width=width, context_dim=CLASSES, key=jax.random.PRNGKey(0))

    def model(x: Any = None, y: Any = None) -> None:
        net = eqx_module("score", e)
        with numpyro.plate("data", y.shape[0]):
            c = jax.nn.one_hot(y, CLASSES)
            numpyro.sample("x", gm.models.Diffusion(net, sde="vp", context=c), obs=x)

    return model


def guided_samples(fit: gm.Fit, y: np.ndarray, w: float, seed: int) -> np.ndarray:
    """One draw per label in ``y`` with the guided score ``(1 + w) s(x, t, c) - w s(x, t, 0)``."""
    from gmppl.models.diffusion import find_diffusion, with_options

    p = fit.program
    x = np.zeros((len(y), 2), np.float32)
    if fit.engine == "pyro":
        import torch

        fit.write_back()  # a fit leaves the caller's module as it was: write the fitted weights into it
        d = find_diffusion(p.trace(x=p.as_array(x), inputs={"y": y}).nodes["x"]["fn"])
        torch.manual_seed(seed)
        with torch.no_grad():
            return with_options(d, guidance=w).generate(len(y))[0].cpu().numpy()
    import jax

    d = find_diffusion(p.trace(p.params, jax.random.PRNGKey(0), x=p.as_array(x), inputs={"y": y})["x"]["fn"])
    guided = with_options(d, guidance=w)
    return np.asarray(jax.jit(lambda k: guided.generate(k, len(y))[0])(jax.random.PRNGKey(seed)))


def plot(out: Path, test: dict, unguided: np.ndarray, guided: np.ndarray, y: np.ndarray, w: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(12, 4), sharex=True, sharey=True)
    panels = [
        (test["x"], test["y"], "held-out data"),
        (unguided, y, "samples given y"),
        (guided, y, f"guided samples (w = {w:g})"),
    ]
    for a, (xs, ys, title) in zip(ax, panels, strict=True):
        for k in range(CLASSES):
            a.scatter(*xs[ys == k].T, s=3, color=f"C{k}", label=f"y = {k}")
        a.set_title(title)
    ax[0].legend(loc="upper right", markerscale=4)
    fig.savefig(out / "samples.png", dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", choices=["pyro", "numpyro"], default="pyro")
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--out", type=Path, default=Path("out/conditional_diffusion"))
    ap.add_argument("--n-eval", type=int, default=500, help="samples per class and held-out points for W1")
    ap.add_argument("--n-loglik", type=int, default=200, help="held-out points for the ODE log-likelihood")
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument(
        "--guidance", type=float, default=1.0, help="classifier-free guidance weight w of the guided sampler"
    )
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    train = labelled_moons(4000, args.seed)
    test = labelled_moons(max(2 * args.n_eval, args.n_loglik), args.seed + 1)
    t0 = time.perf_counter()
    fit = gm.fit(
        build_model(args.engine, args.width),
        train,
        gm.inference.Score(guidance_dropout=0.1),
        steps=args.steps,
        batch_size=256,
        seed=args.seed,
        optim=gm.optim.Adam(lr=2e-3),
        progress=False,
    )
    report: dict = {
        "engine": args.engine,
        "steps": args.steps,
        "guidance": args.guidance,
        "train_seconds": round(time.perf_counter() - t0, 2),
    }
    y = np.repeat(np.arange(CLASSES), args.n_eval)
    unguided = np.asarray(fit.sample(inputs={"y": y}, seed=args.seed))
    guided = guided_samples(fit, y, args.guidance, args.seed)
    w1 = gm.divergences.Wasserstein1(num_bootstrap=5)
    floor = labelled_moons(4 * args.n_eval, args.seed + 7)
    for k in range(CLASSES):
        held = test["x"][test["y"] == k][: args.n_eval]
        report[f"class_{k}"] = {
            "w1": round(float(w1(unguided[y == k], held)), 4),
            "w1_guided": round(float(w1(guided[y == k], held)), 4),
            "w1_floor_data_vs_data": round(float(w1(floor["x"][floor["y"] == k][: args.n_eval], held)), 4),
        }
    t0 = time.perf_counter()
    rows = {"x": test["x"][: args.n_loglik], "y": test["y"][: args.n_loglik]}
    lp = np.asarray(fit.log_prob(rows), dtype=np.float64)
    wrong = np.asarray(fit.log_prob({"x": rows["x"], "y": 1 - rows["y"]}), dtype=np.float64)
    report["heldout_loglik_nats"] = round(float(lp.mean()), 4)
    report["heldout_loglik_stderr"] = round(float(lp.std(ddof=1) / np.sqrt(len(lp))), 4)
    report["heldout_loglik_median_nats"] = round(float(np.median(lp)), 4)  # robust to a stray point off the moons
    # far from a moon, log p(x | wrong y) is enormous and negative: its median, and how often the
    # likelihoods classify the point (the Bayes classifier under equal class priors)
    report["heldout_loglik_wrong_label_median_nats"] = round(float(np.median(wrong)), 4)
    report["likelihood_classifier_accuracy"] = round(float(np.mean(lp > wrong)), 4)
    report["loglik_seconds"] = round(time.perf_counter() - t0, 2)
    plot(args.out, test, unguided, guided, y, args.guidance)
    (args.out / "report.json").write_text(json.dumps(report, indent=2))
    print(f"held-out log p(x | y) = {report['heldout_loglik_nats']} +- {report['heldout_loglik_stderr']} nats")
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
