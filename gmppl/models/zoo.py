"""Ready-made programs — probabilistic PCA, VAE, GAN generator, flow, diffusion, continuous flow — in Pyro and NumPyro.

Each builder returns a fresh program ``model(x=None, n=None)`` with its own networks, written
exactly as a user would write it (``pyro.module`` / ``eqx_module``), for the engine asked for.
Observed site ``"x"``, latent ``"z"``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gmppl.errors import UnknownName
from gmppl.models.nets import eqx_mlp, torch_mlp

ENGINES = ("pyro", "numpyro")


def _check(engine: str) -> None:
    if engine not in ENGINES:
        raise UnknownName(f"engine={engine!r} is unknown; use one of {ENGINES}.")


def _n(x: Any, n: int | None) -> int | None:
    """The data plate's size: ``x``'s number of examples, else ``n``."""
    return x.shape[0] if x is not None else n


def gan(
    dim: int, *, latent_dim: int = 2, width: int = 128, depth: int = 2, engine: str = "pyro", seed: int = 0
) -> Callable:
    """An implicit generator ``x = g(z)``, ``z ~ N(0, I_k)``, ``g`` an MLP: samples only, no density."""
    _check(engine)
    if engine == "pyro":
        import pyro
        import pyro.distributions as dist
        import torch

        torch.manual_seed(seed)
        g_net = torch_mlp(latent_dim, dim, width=width, depth=depth, activation="relu")

        def model(x: Any = None, n: int | None = None) -> None:
            g = pyro.module("generator", g_net)
            with pyro.plate("data", _n(x, n)):
                z = pyro.sample("z", dist.Normal(torch.zeros(latent_dim), 1.0).to_event(1))
                pyro.deterministic("x", g(z), event_dim=1)

        return model
    import jax
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as ndist
    from numpyro.contrib.module import eqx_module

    g_eqx = eqx_mlp(latent_dim, dim, width=width, depth=depth, activation="relu", key=jax.random.PRNGKey(seed))

    def jmodel(x: Any = None, n: int | None = None) -> None:
        g = eqx_module("generator", g_eqx)
        with numpyro.plate("data", _n(x, n)):
            z = numpyro.sample("z", ndist.Normal(jnp.zeros(latent_dim), 1.0).to_event(1))
            numpyro.deterministic("x", jax.vmap(g)(z))

    return jmodel


def vae(
    dim: int,
    *,
    latent_dim: int = 2,
    width: int = 128,
    depth: int = 2,
    likelihood: str = "normal",
    engine: str = "pyro",
    seed: int = 0,
) -> Callable:
    """A VAE decoder: ``z ~ N(0, I_k)``, ``x | z ~ p(x | dec(z))``.

    ``likelihood``: ``"normal"`` (learned scale per dimension), ``"bernoulli"`` (binary data) or
    ``"continuous_bernoulli"`` (data in [0, 1], Loaiza-Ganem & Cunningham 2019).
    """
    _check(engine)
    if likelihood not in ("normal", "bernoulli", "continuous_bernoulli"):
        raise UnknownName(f"likelihood={likelihood!r}; use normal, bernoulli or continuous_bernoulli.")
    if engine == "pyro":
        import pyro
        import pyro.distributions as dist
        import torch
        from torch.distributions import constraints

        torch.manual_seed(seed)
        dec = torch_mlp(latent_dim, dim, width=width, depth=depth, activation="softplus")

        def model(x: Any = None, n: int | None = None) -> None:
            d = pyro.module("decoder", dec)
            scale = (
                pyro.param("scale", torch.full((dim,), 0.5), constraint=constraints.positive)
                if (likelihood == "normal")
                else None
            )
            with pyro.plate("data", _n(x, n)):
                z = pyro.sample("z", dist.Normal(torch.zeros(latent_dim), 1.0).to_event(1))
                out = d(z)
                if scale is not None:  # likelihood == "normal"
                    px = dist.Normal(out, scale)
                elif likelihood == "bernoulli":
                    px = dist.Bernoulli(logits=out)
                else:
                    px = dist.ContinuousBernoulli(logits=out)
                pyro.sample("x", px.to_event(1), obs=x)

        return model
    import jax
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as ndist
    from numpyro.contrib.module import eqx_module

    dec_eqx = eqx_mlp(latent_dim, dim, width=width, depth=depth, activation="softplus", key=jax.random.PRNGKey(seed))
    if likelihood == "continuous_bernoulli":
        raise UnknownName("numpyro has no ContinuousBernoulli; use likelihood='normal' or 'bernoulli'.")

    def jmodel(x: Any = None, n: int | None = None) -> None:
        d = eqx_module("decoder", dec_eqx)
        scale = (
            numpyro.param("scale", jnp.full((dim,), 0.5), constraint=ndist.constraints.positive)
            if (likelihood == "normal")
            else None
        )
        with numpyro.plate("data", _n(x, n)):
            z = numpyro.sample("z", ndist.Normal(jnp.zeros(latent_dim), 1.0).to_event(1))
            out = jax.vmap(d)(z)
            px = ndist.Normal(out, scale) if likelihood == "normal" else ndist.Bernoulli(logits=out)
            numpyro.sample("x", px.to_event(1), obs=x)

    return jmodel


def ppca(dim: int, k: int = 1, *, engine: str = "pyro", marginal: bool = True, init_scale: float = 0.1) -> Callable:
    """Probabilistic PCA (Tipping & Bishop 1999): ``x = W z + mu + N(0, s^2 I)``, ``z ~ N(0, I_k)``.

    ``marginal=True`` integrates ``z`` analytically, ``x ~ N(mu, W W^T + s^2 I)`` (fit by Likelihood);
    ``marginal=False`` keeps ``z`` as a latent site (fit by ELBO; the exact posterior is Gaussian).
    """
    _check(engine)
    if engine == "pyro":
        import pyro
        import pyro.distributions as dist
        import torch
        from torch.distributions import constraints

        w0 = init_scale * torch.ones(dim, k) + 0.01 * torch.arange(dim * k, dtype=torch.float32).reshape(dim, k)

        def model(x: Any = None, n: int | None = None) -> None:
            W = pyro.param("W", w0.clone())
            mu = pyro.param("mu", torch.zeros(dim))
            s = pyro.param("s", torch.tensor(1.0), constraint=constraints.positive)
            with pyro.plate("data", _n(x, n)):
                if marginal:
                    cov = W @ W.T + s**2 * torch.eye(dim)
                    pyro.sample("x", dist.MultivariateNormal(mu, cov), obs=x)
                else:
                    z = pyro.sample("z", dist.Normal(torch.zeros(k), 1.0).to_event(1))
                    pyro.sample("x", dist.Normal(z @ W.T + mu, s).to_event(1), obs=x)

        return model
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as ndist

    w0j = init_scale * jnp.ones((dim, k)) + 0.01 * jnp.arange(dim * k, dtype=jnp.float32).reshape(dim, k)

    def jmodel(x: Any = None, n: int | None = None) -> None:
        W = numpyro.param("W", w0j)
        mu = numpyro.param("mu", jnp.zeros(dim))
        s = numpyro.param("s", 1.0, constraint=ndist.constraints.positive)
        with numpyro.plate("data", _n(x, n)):
            if marginal:
                numpyro.sample("x", ndist.MultivariateNormal(mu, W @ W.T + s**2 * jnp.eye(dim)), obs=x)
            else:
                z = numpyro.sample("z", ndist.Normal(jnp.zeros(k), 1.0).to_event(1))
                numpyro.sample("x", ndist.Normal(z @ W.T + mu, s).to_event(1), obs=x)

    return jmodel


def flow(
    dim: int,
    *,
    kind: str = "spline",
    layers: int = 4,
    hidden: int | tuple[int, ...] = (64, 64),
    engine: str = "pyro",
    seed: int = 0,
    activation: str = "relu",
) -> Callable:
    """A normalising flow ``x = g(z)``, ``z ~ N(0, I)``, ``g`` a spline or affine coupling stack: exact density.

    ``activation`` (affine only): the coupling networks' ``"relu"``, or ``"tanh"``/``"silu"`` for a smooth
    log-density (what ``Score(method="sliced")`` needs)."""
    _check(engine)
    from gmppl.models import flows
    from gmppl.models.pushforward import Pushforward

    builders: dict[str, Callable[..., Any]] = {"spline": flows.spline_coupling, "affine": flows.affine_coupling}
    if kind not in builders:
        raise UnknownName(f"kind={kind!r}; use one of {sorted(builders)}.")
    extra = {"activation": activation} if kind == "affine" else {}
    if kind != "affine" and activation != "relu":
        raise UnknownName(f"activation={activation!r} is for kind='affine'; spline couplings' networks are ReLU.")
    if engine == "pyro":
        import pyro
        import pyro.distributions as dist
        import torch

        torch.manual_seed(seed)
        g = builders[kind](dim, engine="pyro", layers=layers, hidden=hidden, **extra)

        def model(x: Any = None, n: int | None = None) -> None:
            pyro.module("flow", g)
            with pyro.plate("data", _n(x, n)):
                base = dist.Normal(torch.zeros(dim), torch.ones(dim)).to_event(1)
                pyro.sample("x", Pushforward(base, g), obs=x)

        return model
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as ndist
    from numpyro.contrib.module import eqx_module

    gj = builders[kind](dim, engine="numpyro", layers=layers, hidden=hidden, key=seed, **extra)

    def jmodel(x: Any = None, n: int | None = None) -> None:
        f = eqx_module("flow", gj)
        with numpyro.plate("data", _n(x, n)):
            base = ndist.Normal(jnp.zeros(dim), jnp.ones(dim)).to_event(1)
            numpyro.sample("x", Pushforward(base, f), obs=x)

    return jmodel


def diffusion(
    dim: int, *, sde: str = "vp", width: int = 128, depth: int = 3, engine: str = "pyro", seed: int = 0
) -> Callable:
    """A diffusion model: ``x`` is the pushforward of ``N(0, I)`` by the reverse SDE of a learned score."""
    _check(engine)
    from gmppl.models.diffusion import Diffusion
    from gmppl.models.score_nets import ScoreMLP

    if engine == "pyro":
        import pyro
        import torch

        torch.manual_seed(seed)
        net = ScoreMLP(dim, width=width, depth=depth)

        def model(x: Any = None, n: int | None = None) -> None:
            s = pyro.module("score", net)
            with pyro.plate("data", _n(x, n)):
                pyro.sample("x", Diffusion(s, sde=sde), obs=x)

        return model
    import jax
    import numpyro
    from numpyro.contrib.module import eqx_module

    jnet = ScoreMLP(dim, width=width, depth=depth, key=jax.random.PRNGKey(seed))

    def jmodel(x: Any = None, n: int | None = None) -> None:
        s = eqx_module("score", jnet)
        with numpyro.plate("data", _n(x, n)):
            numpyro.sample("x", Diffusion(s, sde=sde), obs=x)

    return jmodel


def continuous_flow(dim: int, *, width: int = 128, depth: int = 3, engine: str = "pyro", seed: int = 0) -> Callable:
    """A continuous normalising flow (``gm.models.ContinuousFlow``) with a ``ScoreMLP`` velocity field: fit it
    by ``FlowMatching``; exact ODE density."""
    _check(engine)
    from gmppl.models.continuous_flow import ContinuousFlow
    from gmppl.models.score_nets import ScoreMLP

    if engine == "pyro":
        import pyro
        import torch

        torch.manual_seed(seed)
        net = ScoreMLP(dim, width=width, depth=depth)

        def model(x: Any = None, n: int | None = None) -> None:
            v = pyro.module("velocity", net)
            with pyro.plate("data", _n(x, n)):
                pyro.sample("x", ContinuousFlow(v), obs=x)

        return model
    import jax
    import numpyro
    from numpyro.contrib.module import eqx_module

    jnet = ScoreMLP(dim, width=width, depth=depth, key=jax.random.PRNGKey(seed))

    def jmodel(x: Any = None, n: int | None = None) -> None:
        v = eqx_module("velocity", jnet)
        with numpyro.plate("data", _n(x, n)):
            numpyro.sample("x", ContinuousFlow(v), obs=x)

    return jmodel
