"""A conditional VAE on scikit-learn's digits, ``p(x | y)`` with one-hot labels ``y``, fit with ``gm.inference.ELBO``.

Data: ``gm.datasets.digits()`` (1797 8x8 images, pixel / 16 in [0, 1]) and ``gm.datasets.digit_labels()``
as one-hot rows; the first 1500 train, the remaining 297 test (the split of ``vae_digits.py``). Model, an
ordinary Pyro or NumPyro program ``cvae(x=None, y=None)``: ``z ~ N(0, I_8)``, ``x | z, y ~
ContinuousBernoulli(logits = decoder(z, y))`` per pixel, decoder (8+10)-256-64 (ReLU). It is fit as
``gm.fit(cvae, {"x": x, "y": y}, gm.inference.ELBO())``: the labels are inputs, minibatched with their
images, and gmppl's default guide is ``q(z | x, y)``. The baseline is ``vae_digits.py``'s unconditional
VAE, the same architecture without the label (decoder 8-256-64), fit with the same steps and seed.

Reported, in nats per test image with standard errors over the test images:

- held-out ``log p(x | y)`` of the CVAE and ``log p(x)`` of the VAE, both importance-weighted estimates
  (``Fit.log_prob(..., num_particles=K)``), and their gap, paired over the same images. Under one joint
  model ``log p(x | y) - log p(x) = log p(y | x) + log 10 <= log 10 = 2.30`` (uniform ``p(y)``); two separately
  fitted models are not bound by it, and the gap to the VAE exceeds it: the unconditional VAE falls further
  short of the data's ``log p(x)`` than the CVAE does of ``log p(x | y)``.
- the CVAE as one joint model: ``log p(x | k)`` for all ten labels gives its own marginal ``log p(x) =
  logsumexp_k log p(x | k) - log 10``, compared with the VAE's (paired), the gap to it (bound by
  2.30 per image), and its Bayes classifier ``argmax_k p(x | k)``.
- class hit rate: ``--per-class`` samples given each label (``fit.sample(inputs={"y": ...})``, draws of
  ``x``) and the decoder's means for fresh ``z``, classified by a logistic regression fitted on the
  training images. Its accuracy on the real test images is the reference; it is no ceiling: the generated
  digits are prototypical and are classified more reliably than the 297 real test images.

Writes to ``--out``: ``samples.png`` (one row per class 0-9: 8 decoder means, then 8 draws of ``x``) and
``metrics.json``.

One run of each engine (defaults: 10000 steps, batch 128, K = 1000, 100 samples per class, seed 0; 2 shared,
heavily loaded CPU cores, so the times are loose). Nats per test image, +- standard errors over the 297 test
images (hit rates: binomial over the 1000 samples):

| quantity | pyro | numpyro |
|---|---:|---:|
| fit time, CVAE / VAE | 195 s / 40 s | 52 s / 27 s |
| log p(x \\| y), CVAE | 100.74 +- 0.65 | 100.77 +- 0.64 |
| log p(x), VAE (same architecture, no label) | 97.50 +- 0.61 | 97.40 +- 0.62 |
| gap, paired | 3.23 +- 0.25 | 3.37 +- 0.25 |
| CVAE's own log p(x) = log mean_k p(x \\| k) | 98.83 +- 0.61 | 98.79 +- 0.61 |
| CVAE's own log p(x) - VAE's log p(x), paired | 1.33 +- 0.17 | 1.40 +- 0.19 |
| gap to its own log p(x) (<= 2.30), paired | 1.91 +- 0.15 | 1.97 +- 0.14 |
| CVAE as a Bayes classifier, test accuracy | 0.956 | 0.953 |
| hit rate, decoder means | 0.992 +- 0.003 | 0.998 +- 0.001 |
| hit rate, draws of x | 0.982 +- 0.004 | 0.982 +- 0.004 |
| logistic regression on the real test images | 0.916 | 0.916 |

    python examples/cvae_digits.py --engine pyro --out cvae-out
    python examples/cvae_digits.py --engine numpyro --out cvae-out
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

LATENT, HIDDEN, PIXELS, CLASSES = 8, 256, 64, 10


def vae_example() -> Any:
    """``examples/vae_digits.py`` as a module: the unconditional baseline, the NumPyro continuous Bernoulli, grid."""
    spec = importlib.util.spec_from_file_location("vae_digits", Path(__file__).with_name("vae_digits.py"))
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


# ---------------------------------------------------------------------- the model, on each engine
def pyro_cvae(seed: int = 0) -> Any:
    import pyro
    import pyro.distributions as dist
    import torch

    torch.manual_seed(seed)
    decoder = torch.nn.Sequential(
        torch.nn.Linear(LATENT + CLASSES, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, PIXELS)
    )

    def cvae(x=None, y=None):
        d = pyro.module("decoder", decoder)
        with pyro.plate("data", y.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(LATENT), 1.0).to_event(1))
            pyro.sample("x", dist.ContinuousBernoulli(logits=d(torch.cat([z, y], -1))).to_event(1), obs=x)

    return cvae


def numpyro_cvae(seed: int = 0) -> Any:
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist
    from numpyro.contrib.module import eqx_module

    decoder = eqx.nn.MLP(LATENT + CLASSES, PIXELS, HIDDEN, 1, activation=jax.nn.relu, key=jax.random.PRNGKey(seed))
    cb = vae_example().numpyro_continuous_bernoulli()

    def cvae(x=None, y=None):
        d = eqx_module("decoder", decoder)
        with numpyro.plate("data", y.shape[0]):
            z = numpyro.sample("z", dist.Normal(jnp.zeros(LATENT), 1.0).to_event(1))
            numpyro.sample("x", cb(logits=jax.vmap(d)(jnp.concatenate([z, y], -1))).to_event(1), obs=x)

    return cvae


def decoder_mean(fit: Any, z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``E[x | z, y]`` under the fitted CVAE: the program run with ``z`` given, its observed site's mean."""
    program = fit.program
    if fit.engine == "pyro":
        import pyro.poutine as poutine
        import torch

        with torch.no_grad(), program.scope():
            zt = program.as_array(np.asarray(z, np.float32))
            yt = program.as_array(np.asarray(y, np.float32))
            tr = poutine.trace(poutine.condition(program.model, data={"z": zt})).get_trace(x=None, y=yt)
        return tr.nodes["x"]["fn"].mean.cpu().numpy()
    import jax
    from numpyro import handlers

    model = handlers.substitute(
        handlers.condition(program.model, data={"z": z}), data=program.constrain(program.params)
    )
    tr = handlers.trace(handlers.seed(model, jax.random.PRNGKey(0))).get_trace(x=None, y=np.asarray(y, np.float32))
    return np.asarray(tr["x"]["fn"].mean)


def mean_se(values: Any) -> tuple[float, float]:
    v = np.asarray(values, dtype=float)
    return float(v.mean()), float(v.std(ddof=1) / np.sqrt(len(v)))


# ---------------------------------------------------------------------- the run
def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--engine", choices=("pyro", "numpyro"), default="pyro")
    parser.add_argument("--steps", type=int, default=10000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--particles", type=int, default=1000, help="K of the importance-weighted log-likelihoods")
    parser.add_argument("--per-class", type=int, default=100, help="samples per class for the hit rate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("cvae-out"))
    args = parser.parse_args(argv)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch
    from sklearn.linear_model import LogisticRegression

    import gmppl as gm

    torch.set_num_threads(1)  # a small MLP: one intra-op thread is faster (benchmarks/bench_vae.py)
    vae = vae_example()
    x = gm.datasets.digits()
    labels = gm.datasets.digit_labels()
    onehot = np.eye(CLASSES, dtype=np.float32)
    y = onehot[labels]
    train, test = slice(0, 1500), slice(1500, None)

    # the conditional model and its unconditional twin, same steps, batch size and seed
    cvae = (pyro_cvae if args.engine == "pyro" else numpyro_cvae)(args.seed)
    t0 = time.perf_counter()
    fit = gm.fit(
        cvae,
        {"x": x[train], "y": y[train]},
        gm.inference.ELBO(),
        steps=args.steps,
        batch_size=args.batch_size,
        seed=args.seed,
        progress=False,
    )
    cvae_seconds = time.perf_counter() - t0
    base = (vae.pyro_vae if args.engine == "pyro" else vae.numpyro_vae)(args.seed)
    t0 = time.perf_counter()
    base_fit = gm.fit(
        base,
        x[train],
        gm.inference.ELBO(),
        steps=args.steps,
        batch_size=args.batch_size,
        seed=args.seed,
        progress=False,
    )
    vae_seconds = time.perf_counter() - t0

    # held-out densities, paired over the same test images
    lp_cond = fit.log_prob({"x": x[test], "y": y[test]}, num_particles=args.particles)
    lp_base = base_fit.log_prob(x[test], num_particles=args.particles)
    cond, cond_se = mean_se(lp_cond)
    marg, marg_se = mean_se(lp_base)
    gap, gap_se = mean_se(np.asarray(lp_cond) - np.asarray(lp_base))
    # the CVAE as one joint model with p(y) = 1/10: log p(x | k) for every label k gives its own marginal
    # log p(x) = logsumexp_k log p(x | k) - log 10 (so its gap is log p(y | x) + log 10 <= log 10 per image)
    # and its Bayes classifier argmax_k p(x | k)
    every = np.stack(
        [
            np.asarray(fit.log_prob({"x": x[test], "y": onehot[[k] * len(x[test])]}, num_particles=args.particles))
            for k in range(CLASSES)
        ]
    )
    own_marginal = np.logaddexp.reduce(every, axis=0) - np.log(CLASSES)
    own, own_se = mean_se(own_marginal)
    own_gap, own_gap_se = mean_se(np.asarray(lp_cond) - own_marginal)
    own_vs_vae, own_vs_vae_se = mean_se(own_marginal - np.asarray(lp_base))
    bayes_accuracy = float(np.mean(every.argmax(0) == labels[test]))

    # class hit rate: samples given each label, classified by a classifier of the real training images
    clf = LogisticRegression(max_iter=5000).fit(x[train], labels[train])
    ceiling = float(clf.score(x[test], labels[test]))
    wanted = np.repeat(np.arange(CLASSES), args.per_class)
    drawn = np.asarray(fit.sample(inputs={"y": onehot[wanted]}, seed=args.seed))
    z = np.random.default_rng(args.seed).normal(size=(len(wanted), LATENT)).astype(np.float32)
    means = decoder_mean(fit, z, onehot[wanted])
    hit_draws = float(np.mean(clf.predict(drawn) == wanted))
    hit_means = float(np.mean(clf.predict(means) == wanted))
    per_class_means = [float(np.mean(clf.predict(means[wanted == k]) == k)) for k in range(CLASSES)]

    def binomial_se(p: float) -> float:
        return float(np.sqrt(p * (1 - p) / len(wanted)))

    metrics = {
        "engine": args.engine,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "cvae_train_seconds": round(cvae_seconds, 2),
        "vae_train_seconds": round(vae_seconds, 2),
        "iwae_particles": args.particles,
        "test_log_px_given_y": cond,
        "test_log_px_given_y_stderr": cond_se,
        "test_elbo_given_y": float(lp_cond.elbo.mean()),
        "test_log_px_unconditional": marg,
        "test_log_px_unconditional_stderr": marg_se,
        "gap_nats": gap,
        "gap_stderr": gap_se,
        "cvae_marginal_log_px": own,
        "cvae_marginal_log_px_stderr": own_se,
        "cvae_own_gap_nats": own_gap,
        "cvae_own_gap_stderr": own_gap_se,
        "cvae_marginal_minus_vae": own_vs_vae,
        "cvae_marginal_minus_vae_stderr": own_vs_vae_se,
        "cvae_bayes_classifier_test_accuracy": bayes_accuracy,
        "log_px_monte_carlo_stderr_max": float(max(lp_cond.stderr.max(), lp_base.stderr.max())),
        "classifier": "LogisticRegression on the 1500 training images",
        "classifier_test_accuracy": ceiling,
        "samples_per_class": args.per_class,
        "hit_rate_decoder_means": hit_means,
        "hit_rate_decoder_means_stderr": binomial_se(hit_means),
        "hit_rate_draws": hit_draws,
        "hit_rate_draws_stderr": binomial_se(hit_draws),
        "hit_rate_decoder_means_per_class": per_class_means,
    }

    args.out.mkdir(parents=True, exist_ok=True)
    cols = min(8, args.per_class)
    pick = np.concatenate([np.nonzero(wanted == k)[0][:cols] for k in range(CLASSES)])
    panel = np.concatenate(
        [means[pick].reshape(CLASSES, cols, PIXELS), drawn[pick].reshape(CLASSES, cols, PIXELS)], axis=1
    )
    plt.imsave(args.out / "samples.png", vae.grid(panel, CLASSES), cmap="gray_r")
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2))

    print(f"{args.engine}: {args.steps} steps, CVAE {cvae_seconds:.1f}s, VAE {vae_seconds:.1f}s (K={args.particles})")
    print("| quantity | value |")
    print("|---|---:|")
    print(f"| test log p(x \\| y), CVAE | {cond:.2f} +- {cond_se:.2f} |")
    print(f"| test log p(x), VAE | {marg:.2f} +- {marg_se:.2f} |")
    print(f"| gap (paired) | {gap:.2f} +- {gap_se:.2f} (log 10 = {np.log(10):.2f}) |")
    print(f"| CVAE's own log p(x) = log mean_k p(x \\| k) | {own:.2f} +- {own_se:.2f} |")
    print(f"| CVAE's own log p(x) - VAE's (paired) | {own_vs_vae:.2f} +- {own_vs_vae_se:.2f} |")
    print(f"| CVAE gap to its own log p(x) (paired) | {own_gap:.2f} +- {own_gap_se:.2f} |")
    print(f"| CVAE as a Bayes classifier, test accuracy | {bayes_accuracy:.3f} |")
    print(f"| hit rate, decoder means | {hit_means:.3f} +- {binomial_se(hit_means):.3f} |")
    print(f"| hit rate, draws of x | {hit_draws:.3f} +- {binomial_se(hit_draws):.3f} |")
    print(f"| logistic regression on the real test images | {ceiling:.3f} |")
    return metrics


if __name__ == "__main__":
    main()
