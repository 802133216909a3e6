"""Amortised guides: ``q(z | x)`` as a network of the data, built for either engine.

``AmortizedNormal`` is the default guide of ``gm.inference.ELBO``: an encoder maps each example
``x_i`` to the mean and scale of a diagonal Normal over its latent,

    q(z_i | x_i) = N(z_i; mu(x_i), diag(sigma(x_i)^2)),   (mu, log(exp(sigma) - 1)) = encoder(x_i),

so one set of weights serves every example, seen or new (amortisation: Kingma & Welling, 2014).
The guide is an ordinary Pyro/NumPyro program ``guide(x=None, n=None, **inputs)`` that samples the
model's latent inside the model's own data plate; its encoder is registered as the module ``"guide"``.
For a conditional model ``p(x | z, y)`` the encoder sees the inputs too, ``q(z_i | x_i, y_i)``: each
input row is flattened, cast to the data's float type and concatenated to ``x_i`` (inputs in name order).

Example::

    backend = gm.inference.ELBO(guide=gm.models.AmortizedNormal(hidden=(256,)))
    # a linear encoder (no hidden layer) represents the exact posterior of probabilistic PCA
    backend = gm.inference.ELBO(guide=gm.models.AmortizedNormal(hidden=()))
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gmppl.errors import BackendError
from gmppl.models.nets import eqx_mlp, torch_mlp

MODULE_NAME = "guide"


@dataclass(frozen=True)
class LatentSite:
    """Where a guide puts its latent: the model's site, its per-example shape, and the data plate."""

    name: str
    shape: tuple[int, ...]
    x_shape: tuple[int, ...]
    plate: str
    dim: int

    @property
    def size(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class AmortizedNormal:
    """Diagonal-Normal ``q(z|x)`` whose mean and scale come from an encoder of ``x``.

    ``encoder``: None builds an MLP ``prod(x_shape) -> hidden... -> 2 * prod(z_shape)``; or pass your
    own network with that output — a ``torch.nn.Module`` taking a batch ``(B, prod(x_shape))`` for
    Pyro, an Equinox module taking one flattened example for NumPyro. The first half of its output
    is the mean, the second half the scale before ``softplus``. ``hidden=()`` gives a linear encoder.
    """

    encoder: Any = None
    hidden: int | tuple[int, ...] = (256,)
    activation: str = "relu"
    min_scale: float = 1e-5

    def _widths(self) -> tuple[int, int]:
        hidden = (self.hidden,) if isinstance(self.hidden, int) else tuple(self.hidden)
        if len(set(hidden)) > 1:
            raise BackendError(
                f"AmortizedNormal(hidden={self.hidden!r}): the built-in encoder has equal hidden widths; "
                "pass encoder=<your network> for other shapes."
            )
        return (hidden[0] if hidden else 1), len(hidden)

    def build(
        self, engine: str, site: LatentSite, *, seed: int, dtype: Any = None, inputs: dict | None = None
    ) -> Callable:
        """The guide program ``guide(x=None, n=None, **inputs)`` for ``engine``, with a fresh encoder seeded by
        ``seed``; ``inputs`` (example rows) size the encoder's extra input features."""
        extra = sum(math.prod(tuple(v.shape[1:])) for v in (inputs or {}).values())
        if engine == "pyro":
            return self._pyro(site, seed=seed, dtype=dtype, extra=extra)
        return self._numpyro(site, seed=seed, extra=extra)

    # ------------------------------------------------------------------ Pyro
    def _pyro(self, site: LatentSite, *, seed: int, dtype: Any, extra: int = 0) -> Callable:
        import pyro
        import pyro.distributions as dist
        import torch
        import torch.nn.functional as F

        net = self.encoder
        if net is None:
            width, depth = self._widths()
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                net = torch_mlp(
                    math.prod(site.x_shape) + extra,
                    2 * site.size,
                    width=width,
                    depth=depth,
                    activation=self.activation,
                )
            if dtype is not None:
                net = net.to(dtype)
        elif not isinstance(net, torch.nn.Module):
            raise BackendError(
                f"AmortizedNormal(encoder={type(net).__name__}) on the Pyro engine needs a torch.nn.Module "
                f"mapping (batch, {math.prod(site.x_shape) + extra}) to (batch, {2 * site.size})."
            )
        nx, k, min_scale = len(site.x_shape), site.size, self.min_scale

        def guide(x: Any = None, n: int | None = None, **inputs: Any) -> Any:
            encoder = pyro.module(MODULE_NAME, net)
            features = x.reshape(*x.shape[: x.dim() - nx], -1)
            if inputs:
                rows = [inputs[k].reshape(x.shape[0], -1).to(features.dtype) for k in sorted(inputs)]
                features = torch.cat([features, *rows], -1)
            h = encoder(features)
            loc = h[..., :k].reshape(*h.shape[:-1], *site.shape)
            scale = (F.softplus(h[..., k:]) + min_scale).reshape(loc.shape)
            with pyro.plate(site.plate, x.shape[0], dim=site.dim):
                return pyro.sample(site.name, dist.Normal(loc, scale).to_event(len(site.shape)))

        return guide

    # ------------------------------------------------------------------ NumPyro
    def _numpyro(self, site: LatentSite, *, seed: int, extra: int = 0) -> Callable:
        import jax
        import numpyro
        import numpyro.distributions as dist
        from numpyro.contrib.module import eqx_module

        net = self.encoder
        if net is None:
            width, depth = self._widths()
            net = eqx_mlp(
                math.prod(site.x_shape) + extra,
                2 * site.size,
                key=jax.random.PRNGKey(seed),
                width=width,
                depth=depth,
                activation=self.activation,
            )
        elif hasattr(net, "parameters") and hasattr(net, "forward"):
            raise BackendError(
                "AmortizedNormal(encoder=<torch module>) on the NumPyro engine: pass an Equinox module that maps "
                f"one flattened example ({math.prod(site.x_shape) + extra},) to ({2 * site.size},)."
            )
        k, min_scale = site.size, self.min_scale

        def guide(x: Any = None, n: int | None = None, **inputs: Any) -> Any:
            encoder = eqx_module(MODULE_NAME, net)
            features = x.reshape(x.shape[0], -1)
            if inputs:
                rows = [inputs[k].reshape(x.shape[0], -1).astype(features.dtype) for k in sorted(inputs)]
                features = jax.numpy.concatenate([features, *rows], -1)
            h = jax.vmap(encoder)(features)
            loc = h[:, :k].reshape(x.shape[0], *site.shape)
            scale = (jax.nn.softplus(h[:, k:]) + min_scale).reshape(loc.shape)
            with numpyro.plate(site.plate, x.shape[0], dim=site.dim):
                return numpyro.sample(site.name, dist.Normal(loc, scale).to_event(len(site.shape)))

        return guide
