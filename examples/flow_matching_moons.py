"""A continuous normalising flow on two moons (or a 2-D Gaussian mixture), fitted by flow matching
(``gm.inference.FlowMatching``).

``dx/dt = v_theta(x, t)`` carries ``N(0, I)`` at ``t = 0`` to the data at ``t = 1``; ``v_theta`` is regressed on
the conditional velocity of the OT (or VP) path, with independent or minibatch-OT pairing. Reports:

* the held-out log-likelihood in nats (exact: the instantaneous change of variables with the exact trace);
* training speed (steady-state milliseconds per step, between the first and last progress callbacks, so
  JAX's compilation is left out);
* sample quality, Wasserstein-1 to held-out data (``gmppl.divergences``, bootstrap standard error), for
  Euler and Heun with 1..64 steps and for adaptive Dopri5, all from the same noise; the *steps to
  target* are the fewest steps whose W1 is within 2 standard errors of the Dopri5 samples' W1;
* with ``--diffusion``: the same for a ``Diffusion`` (VP SDE, same network and steps) fitted by
  ``gm.inference.Score``, its reverse SDE by Euler–Maruyama with 8..512 steps against 1000 steps
  (``report["diffusion"]["em_reference"]``), and its held-out probability-flow-ODE log-likelihood.

With ``--data mixture`` the data are a three-component 2-D Gaussian mixture with known parameters
(:data:`MIX_WEIGHTS`, :data:`MIX_MEANS`, :data:`MIX_COVS`), so the model's held-out log-density is compared
point by point with the true one: ``loglik_abs_error`` is the mean of ``|log p_model(x) - log p_true(x)|``
over the held-out points and ``loglik_bias`` the mean of ``log p_model(x) - log p_true(x)`` (each with a
standard error, std/sqrt(n)), for the flow and (``--diffusion``) for the diffusion's probability-flow ODE.

``--quick`` is a smoke run: 200 steps, a small network and sample, and short step grids.

Writes ``report.json`` and ``samples.png`` (held-out data, Dopri5 samples, few-step Euler samples).

    python examples/flow_matching_moons.py --engine pyro --steps 5000 --coupling minibatch_ot --diffusion
    python examples/flow_matching_moons.py --engine numpyro --quick
    python examples/flow_matching_moons.py --data mixture --diffusion
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

import gmppl as gm

FLOW_GRID = (1, 2, 4, 8, 16, 32, 64)
SDE_GRID = (8, 16, 32, 64, 128, 256, 512)
SDE_REFERENCE = 1000

# the known mixture (``--data mixture``): means on a triangle of radius 2, unequal weights and covariances
MIX_WEIGHTS = np.array([0.5, 0.3, 0.2])
MIX_MEANS = 2.0 * np.array([[np.cos(a), np.sin(a)] for a in np.deg2rad([90.0, 210.0, 330.0])])
MIX_COVS = np.array([[[0.25, 0.10], [0.10, 0.15]], [[0.10, 0.0], [0.0, 0.40]], [[0.20, -0.12], [-0.12, 0.20]]])


def mixture(n: int, seed: int = 0) -> np.ndarray:
    """``n`` draws from the known mixture, float32 ``(n, 2)``."""
    rng = np.random.default_rng(seed)
    k = rng.choice(len(MIX_WEIGHTS), size=n, p=MIX_WEIGHTS)
    eps = rng.normal(size=(n, 2))
    chol = np.linalg.cholesky(MIX_COVS)
    return (MIX_MEANS[k] + np.einsum("nij,nj->ni", chol[k], eps)).astype(np.float32)


def mixture_log_prob(x: np.ndarray) -> np.ndarray:
    """The exact log-density of the known mixture at ``x`` (float64)."""
    from scipy.special import logsumexp
    from scipy.stats import multivariate_normal

    x = np.asarray(x, dtype=np.float64)
    comp = [
        np.log(w) + multivariate_normal(m, c).logpdf(x)
        for w, m, c in zip(MIX_WEIGHTS, MIX_MEANS, MIX_COVS, strict=True)
    ]
    return logsumexp(np.stack(comp, -1), axis=-1)


def dataset(name: str, n: int, seed: int) -> np.ndarray:
    return gm.datasets.moons(n, seed=seed) if name == "moons" else mixture(n, seed=seed)


def loglik_report(lp: np.ndarray, x: np.ndarray, data: str) -> dict:
    """Held-out log-likelihood (mean, standard error); for the mixture also the per-point error against the
    true log-density: mean ``|log p_model - log p_true|`` and mean ``log p_model - log p_true``."""
    se = lambda v: round(float(v.std(ddof=1) / np.sqrt(len(v))), 4)  # noqa: E731
    out = {"heldout_loglik_nats": round(float(lp.mean()), 4), "heldout_loglik_stderr": se(lp)}
    if data == "mixture":
        diff = lp - mixture_log_prob(x)
        out["heldout_loglik_true_nats"] = round(float((lp - diff).mean()), 4)
        out["loglik_abs_error"], out["loglik_abs_error_stderr"] = round(float(np.abs(diff).mean()), 4), se(np.abs(diff))
        out["loglik_bias"], out["loglik_bias_stderr"] = round(float(diff.mean()), 4), se(diff)
    return out


def build_model(engine: str, width: int, kind: str = "flow", seed: int = 0) -> Any:
    """``x ~ ContinuousFlow(v_theta)`` (or ``Diffusion(s_theta)``) in ``plate("data")``, a ``ScoreMLP`` net
    initialised from ``seed``."""
    site = gm.models.ContinuousFlow if kind == "flow" else (lambda net: gm.models.Diffusion(net, sde="vp"))
    if engine == "pyro":
        import pyro
        import torch

        torch.manual_seed(seed)
        net0 = gm.models.ScoreMLP(2, width=width)

        def model(x: Any = None, n: int | None = None) -> None:
            net = pyro.module("net", net0)
            with pyro.plate("data", x.shape[0] if x is not None else n):
                pyro.sample("x", site(net), obs=x)

        return model
    import jax
    import numpyro
    from numpyro.contrib.module import eqx_module

    net1 = gm.models.ScoreMLP(2, width=width, key=jax.random.PRNGKey(seed))

    def model(x: Any = None, n: int | None = None) -> None:
        net = eqx_module("net", net1)
        with numpyro.plate("data", x.shape[0] if x is not None else n):
            numpyro.sample("x", site(net), obs=x)

    return model


def fitted_site(fit: gm.Fit, x: np.ndarray) -> Any:
    """The fitted ``ContinuousFlow`` or ``Diffusion`` (its network carries the trained weights)."""
    from gmppl.models.continuous_flow import find_flow
    from gmppl.models.diffusion import find_diffusion

    p = fit.program
    if fit.engine == "pyro":
        fit.write_back()  # the fitted weights into the network (a fit leaves the caller's modules as they were)
        fn = p.trace(x=p.as_array(x)).nodes["x"]["fn"]
    else:
        import jax

        fn = p.trace(p.params, jax.random.PRNGKey(0), x=p.as_array(x))["x"]["fn"]
    return find_flow(fn) or find_diffusion(fn)


def flow_samples(d: Any, engine: str, z: np.ndarray, solver: str, steps: int) -> tuple[np.ndarray, int]:
    """``x(1)`` from the noise ``z`` with a solver, and its velocity evaluations."""
    if engine == "pyro":
        import torch

        with torch.no_grad():
            x, info = d.transform(torch.as_tensor(z), solver=solver, steps=steps)
        return x.numpy(), int(info["nfe"])
    import jax

    x, info = jax.jit(lambda z: d.transform(z, solver=solver, steps=steps))(z)
    return np.asarray(x), int(info["nfe"])


def sde_samples(d: Any, engine: str, n: int, steps: int, seed: int) -> np.ndarray:
    if engine == "pyro":
        import torch

        torch.manual_seed(seed)
        with torch.no_grad():
            return d.generate(n, sampler="em", steps=steps)[0].numpy()
    import jax

    return np.asarray(jax.jit(lambda k: d.generate(k, n, sampler="em", steps=steps)[0])(jax.random.PRNGKey(seed)))


def timed_fit(model: Any, x: np.ndarray, backend: Any, args: argparse.Namespace) -> tuple[gm.Fit, dict]:
    marks: list[tuple[int, float]] = []
    t0 = time.perf_counter()
    fit = gm.fit(
        model, x, backend, steps=args.steps, batch_size=args.batch_size, seed=args.seed,
        optim=gm.optim.Adam(lr=args.lr), progress=False, callbacks=[lambda step, m: marks.append((step, time.perf_counter()))],
    )  # fmt: skip
    total = time.perf_counter() - t0
    (s0, t_first), (s1, t_last) = marks[0], marks[-1]
    per = 1000 * (t_last - t_first) / (s1 - s0) if s1 > s0 else 1000 * total / args.steps
    return fit, {"train_seconds": round(total, 2), "ms_per_step": round(per, 3)}


def steps_to_target(rows: dict[int, dict], reference: dict) -> int | None:
    """Fewest steps whose W1 is within 2 standard errors of the reference sampler's."""
    ok = [k for k, r in sorted(rows.items()) if r["w1"] <= reference["w1"] + 2 * reference["w1_stderr"]]
    return ok[0] if ok else None


def plot(out: Path, held: np.ndarray, exact: np.ndarray, few: np.ndarray, few_label: str) -> None:
    import matplotlib

    lo, hi = np.percentile(held, [0.5, 99.5], axis=0)
    pad = 0.15 * (hi - lo)
    lims = list(zip(lo - pad, hi + pad, strict=True))
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(12, 4), sharex=True, sharey=True)
    for a, xs, title, color in (
        (ax[0], held, "held-out data", "C0"),
        (ax[1], exact, "flow samples (Dopri5)", "C1"),
        (ax[2], few, f"flow samples ({few_label})", "C2"),
    ):
        a.scatter(*xs.T, s=3, color=color)
        a.set_title(title)
        a.set_xlim(*lims[0])
        a.set_ylim(*lims[1])
    fig.tight_layout()
    fig.savefig(out / "samples.png", dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", choices=["pyro", "numpyro"], default="pyro")
    ap.add_argument("--data", choices=["moons", "mixture"], default="moons", help="mixture: known density")
    ap.add_argument("--steps", type=int, default=5000)
    ap.add_argument("--path", choices=["ot", "vp"], default="ot")
    ap.add_argument("--coupling", choices=["independent", "minibatch_ot"], default="independent")
    ap.add_argument("--sigma-min", type=float, default=0.0)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--n-eval", type=int, default=1000, help="held-out points and samples for W1")
    ap.add_argument("--n-loglik", type=int, default=1000, help="held-out points for the log-likelihood")
    ap.add_argument("--diffusion", action="store_true", help="also fit a Diffusion and count its SDE steps")
    ap.add_argument("--quick", action="store_true", help="tiny settings (a smoke run)")
    ap.add_argument("--out", type=Path, default=None, help="default out/flow_matching_<data>")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    flow_grid, sde_grid, sde_reference = FLOW_GRID, SDE_GRID, SDE_REFERENCE
    if args.quick:
        args.steps, args.width, args.n_eval, args.n_loglik = min(args.steps, 200), 32, 128, 32
        flow_grid, sde_grid, sde_reference = (1, 4), (8, 32), 100
    args.out = args.out or Path(f"out/flow_matching_{args.data}")
    args.out.mkdir(parents=True, exist_ok=True)

    x_train = dataset(args.data, 4000, seed=args.seed)
    x_test = dataset(args.data, max(args.n_eval, args.n_loglik), seed=args.seed + 1)
    held = x_test[: args.n_eval]
    backend = gm.inference.FlowMatching(path=args.path, sigma_min=args.sigma_min, coupling=args.coupling)
    fit, speed = timed_fit(build_model(args.engine, args.width, seed=args.seed), x_train, backend, args)
    report: dict = {"engine": args.engine, "data": args.data, "steps": args.steps, "backend": repr(backend), **speed}

    t0 = time.perf_counter()
    lp = np.asarray(fit.log_prob(x_test[: args.n_loglik]), dtype=np.float64)
    report.update(loglik_report(lp, x_test[: args.n_loglik], args.data))
    report["loglik_seconds"] = round(time.perf_counter() - t0, 2)

    w1 = gm.divergences.Wasserstein1(num_bootstrap=10)

    def quality(xs: np.ndarray, nfe: int) -> dict:
        e = w1(xs, held)
        return {"w1": round(float(e), 4), "w1_stderr": round(e.stderr, 4), "nfe": nfe}

    report["w1_floor_data_vs_data"] = round(float(w1(dataset(args.data, args.n_eval, seed=args.seed + 7), held)), 4)
    d = fitted_site(fit, held[:8])
    z = np.random.default_rng(args.seed).normal(size=held.shape).astype(np.float32)
    exact, nfe = flow_samples(d, args.engine, z, "dopri5", 1)
    report["dopri5"] = quality(exact, nfe)
    few, few_label = exact, "Dopri5"
    for solver in ("euler", "heun"):
        rows = {}
        for k in flow_grid:
            xs, nfe = flow_samples(d, args.engine, z, solver, k)
            rows[k] = quality(xs, nfe)
            if solver == "euler" and k == 4:
                few, few_label = xs, "4 Euler steps"
        report[solver] = {str(k): r for k, r in rows.items()}
        report[f"{solver}_steps_to_target"] = steps_to_target(rows, report["dopri5"])

    if args.diffusion:
        model = build_model(args.engine, args.width, "diffusion", seed=args.seed)
        dfit, dspeed = timed_fit(model, x_train, gm.inference.Score(), args)
        dd = fitted_site(dfit, held[:8])
        ref = quality(sde_samples(dd, args.engine, len(held), sde_reference, args.seed), sde_reference)
        rows = {k: quality(sde_samples(dd, args.engine, len(held), k, args.seed), k) for k in sde_grid}
        dlp = np.asarray(dfit.log_prob(x_test[: args.n_loglik]), dtype=np.float64)
        report["diffusion"] = {
            **dspeed,
            **loglik_report(dlp, x_test[: args.n_loglik], args.data),  # probability-flow ODE
            "em_reference": ref,
            "em": {str(k): r for k, r in rows.items()},
            "em_steps_to_target": steps_to_target(rows, ref),
        }

    plot(args.out, held, exact, few, few_label)
    (args.out / "report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
