"""A variational autoencoder on scikit-learn's digits, fit with ``gm.inference.ELBO`` on either engine.

Data: the 1797 8x8 images of ``sklearn.datasets.load_digits``, pixel / 16 in [0, 1]; the first 1500
train, the remaining 297 test. Model: ``z ~ N(0, I_8)``, ``x | z ~ ContinuousBernoulli(logits =
decoder(z))`` per pixel (Loaiza-Ganem & Cunningham, 2019) — a normalised density on [0, 1], so the
ELBO and ``log p(x)`` are true log-densities in nats per image (Bernoulli cross-entropy on grey
pixels is not one). Decoder 8-256-64 (ReLU); the guide is gmppl's default amortised Normal encoder,
64-256-(8+8). Reported: the test ELBO and the importance-weighted ``log p(x)`` (K = 1000), nats per
image, with standard errors over the test images.

Writes to ``--out``: ``reconstructions.png`` (test images over their reconstructions: the decoder's
mean at the posterior mean of z), ``samples.png`` (decoder means at z ~ N(0, I), and draws of x),
``latent.png`` (posterior means of the test images, first two principal axes, coloured by digit),
and ``metrics.json``.

    python examples/vae_digits.py --engine pyro --steps 10000 --out vae-out
    python examples/vae_digits.py --engine numpyro --steps 10000 --out vae-out
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

LATENT, HIDDEN, PIXELS = 8, 256, 64


# ---------------------------------------------------------------------- the model, on each engine
def pyro_vae(seed: int = 0) -> Any:
    import pyro
    import pyro.distributions as dist
    import torch

    torch.manual_seed(seed)
    decoder = torch.nn.Sequential(torch.nn.Linear(LATENT, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, PIXELS))

    def model(x=None, n=None):
        d = pyro.module("decoder", decoder)
        n = x.shape[0] if x is not None else n
        with pyro.plate("data", n):
            z = pyro.sample("z", dist.Normal(torch.zeros(LATENT), 1.0).to_event(1))
            pyro.sample("x", dist.ContinuousBernoulli(logits=d(z)).to_event(1), obs=x)

    return model


def numpyro_continuous_bernoulli() -> type:
    """``ContinuousBernoulli(logits)`` for NumPyro, which has none, written as torch's is:

    ``log p(x) = x eta - softplus(eta) + log C``, ``C = eta / tanh(eta / 2)``, with the normaliser's
    probability clamped to ``[eps, 1 - eps]`` as torch does (``eps`` of the dtype). The clamp matters: the
    density at pixels that are exactly 0 or 1 grows like ``log |eta|`` without it, and such pixels fill
    the digits' background, so the two engines would fit different models.
    """
    import jax
    import jax.numpy as jnp
    import numpyro.distributions as ndist
    from numpyro.distributions import constraints

    small = 1e-2  # |eta| below which log C = log 2 + eta^2 / 12 (error < 1e-10)

    class ContinuousBernoulli(ndist.Distribution):
        arg_constraints = {"logits": constraints.real}
        support = constraints.unit_interval

        def __init__(self, logits: Any, validate_args: Any = None):
            self.logits = logits
            super().__init__(batch_shape=jnp.shape(logits), validate_args=validate_args)

        def _clamped(self) -> Any:
            eps = jnp.finfo(jnp.result_type(self.logits, float)).eps
            bound = jnp.log1p(-eps) - jnp.log(eps)
            return jnp.clip(self.logits, -bound, bound)

        def log_prob(self, value: Any) -> Any:
            a = jnp.abs(self._clamped())
            near = a < small
            safe = jnp.where(near, 1.0, a)  # every branch finite, so gradients through where() are too
            log_norm = jnp.where(near, jnp.log(2.0) + a**2 / 12, jnp.log(safe) - jnp.log(jnp.tanh(safe / 2)))
            return value * self.logits - jax.nn.softplus(self.logits) + log_norm

        def sample(self, key: Any, sample_shape: tuple = ()) -> Any:
            u = jax.random.uniform(key, sample_shape + self.batch_shape)
            eta = self._clamped()
            near = jnp.abs(eta) < small
            eta = jnp.where(near, small, eta)
            return jnp.where(near, u, jnp.log1p(u * jnp.expm1(eta)) / eta)  # the inverse CDF

        @property
        def mean(self) -> Any:
            eta = self._clamped()
            near = jnp.abs(eta) < small
            safe = jnp.where(near, small, eta)
            return jnp.where(near, 0.5 + eta / 12, 1 / -jnp.expm1(-safe) - 1 / safe)

    return ContinuousBernoulli


def numpyro_vae(seed: int = 0) -> Any:
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist
    from numpyro.contrib.module import eqx_module

    decoder = eqx.nn.MLP(LATENT, PIXELS, HIDDEN, 1, activation=jax.nn.relu, key=jax.random.PRNGKey(seed))
    cb = numpyro_continuous_bernoulli()

    def model(x=None, n=None):
        d = eqx_module("decoder", decoder)
        n = x.shape[0] if x is not None else n
        with numpyro.plate("data", n):
            z = numpyro.sample("z", dist.Normal(jnp.zeros(LATENT), 1.0).to_event(1))
            numpyro.sample("x", cb(logits=jax.vmap(d)(z)).to_event(1), obs=x)

    return model


def decoder_mean(fit: Any, z: np.ndarray) -> np.ndarray:
    """``E[x | z]`` under the fitted model: the program run with ``z`` given, its observed site's mean."""
    if fit.engine == "pyro":
        import pyro.poutine as poutine
        import torch

        program = fit.program
        with torch.no_grad(), program.scope():
            zt = program.as_array(np.asarray(z, np.float32))
            tr = poutine.trace(poutine.condition(program.model, data={"z": zt})).get_trace(x=None, n=len(z))
        return tr.nodes["x"]["fn"].mean.cpu().numpy()
    import jax
    from numpyro import handlers

    program = fit.program
    model = handlers.substitute(
        handlers.condition(program.model, data={"z": z}), data=program.constrain(program.params)
    )
    tr = handlers.trace(handlers.seed(model, jax.random.PRNGKey(0))).get_trace(x=None, n=len(z))
    return np.asarray(tr["x"]["fn"].mean)


# ---------------------------------------------------------------------- the run
def grid(images: np.ndarray, rows: int) -> np.ndarray:
    images = images.reshape(rows, -1, 8, 8)
    pad = np.pad(images, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=0.3)  # light grey frames
    return np.kron(pad.transpose(0, 2, 1, 3).reshape(rows * 10, -1), np.ones((4, 4)))  # 4x4 screen pixels each


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--engine", choices=("pyro", "numpyro"), default="pyro")
    parser.add_argument("--steps", type=int, default=10000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--particles", type=int, default=1000, help="K of the importance-weighted log p(x)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("vae-out"))
    args = parser.parse_args(argv)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch
    from sklearn.datasets import load_digits

    import gmppl as gm

    torch.set_num_threads(1)  # a small MLP: one intra-op thread is faster (benchmarks/bench_vae.py)
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    x_train, x_test, labels = x[:1500], x[1500:], digits.target[1500:]

    model = (pyro_vae if args.engine == "pyro" else numpyro_vae)(args.seed)
    t0 = time.perf_counter()
    fit = gm.fit(model, x_train, gm.inference.ELBO(), steps=args.steps, batch_size=args.batch_size, seed=args.seed)
    seconds = time.perf_counter() - t0

    lp = fit.log_prob(x_test, num_particles=args.particles)
    n = len(x_test)
    metrics = {
        "engine": args.engine,
        "steps": args.steps,
        "likelihood": "continuous Bernoulli (pixel / 16 in [0, 1])",
        "train_seconds": round(seconds, 2),
        "test_elbo_nats_per_image": float(lp.elbo.mean()),
        "test_elbo_stderr": float(lp.elbo.std(ddof=1) / np.sqrt(n)),
        "test_log_px_nats_per_image": float(np.mean(lp)),
        "test_log_px_stderr": float(np.std(np.asarray(lp), ddof=1) / np.sqrt(n)),
        "log_px_monte_carlo_stderr_max": float(lp.stderr.max()),
        "iwae_particles": args.particles,
    }

    args.out.mkdir(parents=True, exist_ok=True)
    z_mean = np.asarray(fit.posterior(x_test, num_samples=64, seed=0)).mean(0)
    recon = decoder_mean(fit, z_mean[:16])
    plt.imsave(args.out / "reconstructions.png", grid(np.concatenate([x_test[:16], recon]), 2), cmap="gray_r")
    prior = np.random.default_rng(args.seed).normal(size=(32, LATENT)).astype(np.float32)
    drawn = np.asarray(fit.sample(32, seed=args.seed))
    plt.imsave(args.out / "samples.png", grid(np.concatenate([decoder_mean(fit, prior), drawn]), 4), cmap="gray_r")

    centred = z_mean - z_mean.mean(0)
    axes = np.linalg.svd(centred, full_matrices=False)[2][:2]
    proj = centred @ axes.T
    fig, ax = plt.subplots(figsize=(5, 5))
    sc = ax.scatter(proj[:, 0], proj[:, 1], c=labels, cmap="tab10", s=12)
    ax.legend(*sc.legend_elements(), title="digit", fontsize=7, loc="best")
    ax.set(title=f"q(z|x) means of the test digits ({args.engine})", xlabel="PC 1", ylabel="PC 2")
    fig.tight_layout()
    fig.savefig(args.out / "latent.png", dpi=100)
    plt.close(fig)

    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(
        f"{args.engine}: {args.steps} steps in {seconds:.1f}s; test ELBO {metrics['test_elbo_nats_per_image']:.2f} "
        f"+- {metrics['test_elbo_stderr']:.2f}, log p(x) (IWAE, K={args.particles}) "
        f"{metrics['test_log_px_nats_per_image']:.2f} +- {metrics['test_log_px_stderr']:.2f} nats per image"
    )
    return metrics


if __name__ == "__main__":
    main()
