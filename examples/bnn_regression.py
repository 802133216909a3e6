"""NumPyro's ``bnn.py`` example (a Bayesian neural network regression) fit by ``gm.inference.NUTS``.

The model is upstream's, unchanged (``numpyro/examples/bnn.py``): a 2-hidden-layer tanh network with
``N(0, 1)`` priors on every weight (no biases; the inputs are the features ``(1, x, x^2)``), a
``Gamma(3, 1)`` prior on the noise precision, written with ``numpyro.sample`` on weight matrices as
``model(X, Y, D_H, D_Y=1)``; ``functools.partial`` binds ``D_H``. gmppl calls it by keyword: ``Y`` is the
observed site (``observed="Y"``), ``X`` an input::

    fit = gm.fit(partial(model, D_H=5), {"Y": Y, "X": X}, gm.inference.NUTS(...), observed="Y")

Data: upstream's ``get_data`` (``N = 100`` points, ``x`` evenly spaced in [-1, 1], ``y = (1, x, x^2) . W +
0.5 (0.5 + x)^2 sin(4 x) + 0.05 eps``, ``W = 0.5 randn(3)`` from ``np.random.seed(0)``, then ``Y``
standardised). Held out: 500 new points from the same generator (the same ``W``, fresh noise, the
training standardisation) at upstream's ``X_test``, ``x`` evenly spaced in [-1.3, 1.3]: 384 of them
inside the training range, 116 outside it.

Reported: the 90% posterior predictive band's coverage of the held-out points (the 5% and 95% quantiles
of ``posterior_predictive`` per row, from ``fit.to_arviz({"Y": Y_test, "X": X_test})``), inside and
outside [-1, 1], with binomial standard errors; the held-out log predictive density per point; and
``az.loo`` on the training data. Writes ``--out``/``bnn.png`` (data, held-out points, the predictive mean
and 90% band, one ``fit.sample(inputs={"X": X_test})`` draw per row) and ``metrics.json``.

One run (upstream's settings, the defaults here: 1 chain, 1000 warmup + 2000 draws, ``D_H = 5``, seed 0; 157 s
of NUTS on 2 shared, heavily loaded CPU cores):

| quantity | value |
|---|---:|
| 90% band coverage, held out, x in [-1, 1] | 0.961 +- 0.010 (369 of 384) |
| 90% band coverage, held out, 1 < abs(x) <= 1.3 | 1.000 (116 of 116) |
| held-out log predictive density, x in [-1, 1] | 0.195 +- 0.023 nats per point |
| ``az.loo`` on the 100 training points | elpd 13.77 +- 4.59, p_loo 7.00, max Pareto k 0.52 |
| posterior mean of sigma_obs (standardised scale) | 0.236 (the generator's: 0.189) |

(+- binomial standard errors of the held-out draws, given the fit.) The band over-covers, by 6 standard
errors: the posterior puts the noise sd at 0.236 where the generator's is 0.189, and a band of
+-1.645 x 0.236 around the truth covers ``P(abs(N(0, 1)) < 1.645 x 0.236 / 0.189) = 0.96`` of fresh points.
Outside the training range the band widens and covers everything.

    python examples/bnn_regression.py --out bnn-out
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np


# ---------------------------------------------------------------------- upstream's model and data
def nonlin(x: Any) -> Any:
    import jax.numpy as jnp

    return jnp.tanh(x)


def model(X, Y, D_H, D_Y=1):
    """numpyro/examples/bnn.py's model, verbatim but for the imports."""
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist

    N, D_X = X.shape

    # sample first layer (we put unit normal priors on all weights)
    w1 = numpyro.sample("w1", dist.Normal(jnp.zeros((D_X, D_H)), jnp.ones((D_X, D_H))))
    assert w1.shape == (D_X, D_H)
    z1 = nonlin(jnp.matmul(X, w1))  # <= first layer of activations
    assert z1.shape == (N, D_H)

    # sample second layer
    w2 = numpyro.sample("w2", dist.Normal(jnp.zeros((D_H, D_H)), jnp.ones((D_H, D_H))))
    assert w2.shape == (D_H, D_H)
    z2 = nonlin(jnp.matmul(z1, w2))  # <= second layer of activations
    assert z2.shape == (N, D_H)

    # sample final layer of weights and neural network output
    w3 = numpyro.sample("w3", dist.Normal(jnp.zeros((D_H, D_Y)), jnp.ones((D_H, D_Y))))
    assert w3.shape == (D_H, D_Y)
    z3 = jnp.matmul(z2, w3)  # <= output of the neural network
    assert z3.shape == (N, D_Y)

    if Y is not None:
        assert Y.shape == (N, D_Y)

    # we put a prior on the observation noise
    prec_obs = numpyro.sample("prec_obs", dist.Gamma(3.0, 1.0))
    sigma_obs = 1.0 / jnp.sqrt(prec_obs)

    # observe data
    with numpyro.plate("data", N):
        # note we use to_event(1) because each observation has shape (1,)
        numpyro.sample("Y", dist.Normal(z3, sigma_obs).to_event(1), obs=Y)


def upstream_data(N: int = 50, D_X: int = 3, sigma_obs: float = 0.05) -> tuple[Any, np.ndarray, np.ndarray]:
    """Upstream's generator, in numpy float64: ``np.random.seed(0)``, ``W = 0.5 randn(D_X)``, then the noise, the
    next ``N`` draws of the same stream (a private ``RandomState(0)`` here: the same numbers, no global state).
    Returns the noise-free ``f``, the training ``x`` and the training ``y`` before standardisation."""
    rs = np.random.RandomState(0)
    W = 0.5 * rs.randn(D_X)

    def f(x: np.ndarray) -> np.ndarray:
        return features(x, D_X, np.float64) @ W + 0.5 * np.power(0.5 + x, 2.0) * np.sin(4.0 * x)

    x = np.linspace(-1, 1, N)
    return f, x, f(x) + sigma_obs * rs.randn(N)


def features(x: np.ndarray, D_X: int = 3, dtype: Any = np.float32) -> np.ndarray:
    """Upstream's inputs: the powers ``(1, x, ..., x^(D_X - 1))``."""
    return np.power(np.asarray(x, np.float64)[:, None], np.arange(D_X)).astype(dtype)


def get_data(N: int = 50, D_X: int = 3, sigma_obs: float = 0.05, N_test: int = 500, heldout_seed: int = 1):
    """Upstream's ``get_data`` (then float32), plus held-out ``Y_test`` at upstream's ``X_test`` from the same
    generator with fresh noise, standardised with the training data's mean and sd."""
    f, x, y = upstream_data(N, D_X, sigma_obs)
    mean, sd = y.mean(), y.std()
    x_test = np.linspace(-1.3, 1.3, N_test)
    noise = np.random.default_rng(heldout_seed).normal(size=N_test)
    Y_test = ((f(x_test) + sigma_obs * noise - mean) / sd)[:, None].astype(np.float32)
    return features(x, D_X), ((y - mean) / sd)[:, None].astype(np.float32), features(x_test, D_X), Y_test


def coverage(inside: np.ndarray) -> tuple[float, float, int]:
    """Fraction covered, its binomial standard error, and the count of points."""
    p = float(np.mean(inside)) if len(inside) else float("nan")
    return p, float(np.sqrt(p * (1 - p) / max(len(inside), 1))), int(len(inside))


# ---------------------------------------------------------------------- the run
def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-data", type=int, default=100)
    parser.add_argument("--num-hidden", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--chains", type=int, default=1)
    parser.add_argument("--max-tree-depth", type=int, default=10, help="NUTS's (upstream: NumPyro's default, 10)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bnn-out"))
    args = parser.parse_args(argv)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

    import arviz as az
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import gmppl as gm

    X, Y, X_test, Y_test = get_data(N=args.num_data)
    t0 = time.perf_counter()
    fit = gm.fit(
        functools.partial(model, D_H=args.num_hidden),
        {"Y": Y, "X": X},
        gm.inference.NUTS(num_warmup=args.warmup, num_samples=args.samples, max_tree_depth=args.max_tree_depth),
        chains=args.chains,
        observed="Y",
        seed=args.seed,
        progress=False,
    )
    seconds = time.perf_counter() - t0

    # the posterior predictive per held-out row: dims (chain, draw, obs, Y_dim_0)
    tree = fit.to_arviz({"Y": Y_test, "X": X_test})
    pp = tree["posterior_predictive"]["Y"].values[..., 0]
    draws = pp.reshape(-1, pp.shape[-1])  # (chains * draws, rows)
    lo, hi = np.quantile(draws, [0.05, 0.95], axis=0)
    mean = draws.mean(0)
    y, x = Y_test[:, 0], X_test[:, 1]
    covered = (y >= lo) & (y <= hi)
    within = np.abs(x) <= 1.0
    cov_in, cov_in_se, n_in = coverage(covered[within])
    cov_out, cov_out_se, n_out = coverage(covered[~within])
    one_draw = np.asarray(fit.sample(inputs={"X": X_test}, seed=args.seed))[:, 0]  # one draw per row

    # held-out log predictive density per point: log mean_s p(y_i | theta_s), from the log_likelihood group
    ll = tree["log_likelihood"]["Y"].values.reshape(-1, len(y))
    lpd = np.logaddexp.reduce(ll, axis=0) - np.log(len(ll))
    lpd_in = float(lpd[within].mean())
    lpd_in_se = float(lpd[within].std(ddof=1) / np.sqrt(n_in))

    loo = az.loo(fit.to_arviz(), pointwise=True)
    prec = np.concatenate([d.values["prec_obs"] for d in fit.draws])
    metrics = {
        "num_data": args.num_data,
        "num_hidden": args.num_hidden,
        "warmup": args.warmup,
        "samples": args.samples,
        "chains": args.chains,
        "nuts_seconds": round(seconds, 2),
        "coverage90_within_training_range": cov_in,
        "coverage90_within_stderr": cov_in_se,
        "heldout_points_within": n_in,
        "coverage90_outside_training_range": cov_out,
        "coverage90_outside_stderr": cov_out_se,
        "heldout_points_outside": n_out,
        "heldout_lpd_within_per_point": lpd_in,
        "heldout_lpd_within_stderr": lpd_in_se,
        "loo_elpd": float(loo.elpd),
        "loo_se": float(loo.se),
        "loo_p": float(loo.p),
        "loo_pareto_k_max": float(np.max(loo.pareto_k)),
        "sigma_obs_posterior_mean": float(np.mean(1 / np.sqrt(prec))),
        "sigma_obs_true_standardised": float(0.05 / np.std(upstream_data(args.num_data)[2])),
    }

    args.out.mkdir(parents=True, exist_ok=True)
    order = np.argsort(x)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.fill_between(x[order], lo[order], hi[order], color="C0", alpha=0.3, label="90% predictive band")
    ax.plot(x[order], mean[order], color="C0", lw=2, label="predictive mean")
    ax.plot(x, one_draw, ".", color="C0", ms=2, alpha=0.5, label="fit.sample(inputs={'X': X_test})")
    ax.plot(x, y, ".", color="0.5", ms=3, label="held out (same generator)")
    ax.plot(X[:, 1], Y[:, 0], "kx", ms=5, label="training data")
    ax.axvspan(-1.3, -1, color="0.9", zorder=0)
    ax.axvspan(1, 1.3, color="0.9", zorder=0)
    ax.set(
        xlabel="x",
        ylabel="Y (standardised)",
        title=f"BNN (D_H={args.num_hidden}), NUTS: 90% band covers {cov_in:.0%} of held-out points in [-1, 1]",
    )
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(args.out / "bnn.png", dpi=100)
    plt.close(fig)
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2))

    print(f"NUTS: {args.chains} chain(s) x ({args.warmup} warmup + {args.samples} draws) in {seconds:.1f}s")
    print("| quantity | value |")
    print("|---|---:|")
    print(f"| 90% band coverage, held out, x in [-1, 1] (n={n_in}) | {cov_in:.3f} +- {cov_in_se:.3f} |")
    print(f"| 90% band coverage, held out, 1 < abs(x) <= 1.3 (n={n_out}) | {cov_out:.3f} +- {cov_out_se:.3f} |")
    print(f"| held-out log predictive density per point, x in [-1, 1] | {lpd_in:.3f} +- {lpd_in_se:.3f} |")
    print(f"| az.loo elpd (training, n={args.num_data}) | {loo.elpd:.2f} +- {loo.se:.2f} (p_loo {loo.p:.2f}) |")
    print(f"| max Pareto k | {metrics['loo_pareto_k_max']:.2f} |")
    print(
        f"| posterior mean of sigma_obs (true {metrics['sigma_obs_true_standardised']:.3f}) | "
        f"{metrics['sigma_obs_posterior_mean']:.3f} |"
    )
    return metrics


if __name__ == "__main__":
    main()
