"""Default score networks ``s(x, t)`` for ``Diffusion``, for torch and equinox, called on batches.

* ``ScoreMLP(dim)``: ``[x, e(t)] -> MLP(depth x width, SiLU) -> R^dim`` for vectors; with ``context_dim=k``
  a conditional network ``s(x, t, c) = MLP([x, e(t), c])`` for ``Diffusion(..., context=c)``, ``c`` of
  ``k`` entries per row (e.g. one-hot labels; zeros is the default null context of guidance);
* ``ScoreUNet(channels)``: a two-level convolutional U-Net for images ``(C, H, W)`` (H, W even),
  the time embedding added to every block's features.

``e(t) = [sin(w_k t), cos(w_k t)]`` with fixed frequencies ``w_k`` spaced geometrically in
``[1, 200]`` (not trained). With ``sde`` (match the ``Diffusion``'s) the output is divided by the
perturbation kernel's ``sigma_t``, ``s(x, t) = h(x, t) / sigma_t`` (Song et al. 2021), so ``h`` predicts
the noise ``-z``; the default ``sde=None`` outputs the score directly (with the sigma-scaling the
probability-flow ODE near ``t = eps`` got too stiff for the adaptive sampler at tolerances below 1e-3). A torch module by default; pass ``key=jax.random.PRNGKey(..)`` for an
equinox module (JAX/NumPyro). Both carry ``event_shape`` so ``Diffusion`` needs no shape argument.
"""

from __future__ import annotations

import functools
import math
from typing import Any

from gmppl.models.sde import as_sde

_W_MAX = 200.0


def _frequencies(embed_dim: int, xp: Any) -> Any:
    half = embed_dim // 2
    return xp.exp(xp.linspace(0.0, math.log(_W_MAX), half))


def ScoreMLP(  # noqa: N802 - a network constructor
    dim: int,
    *,
    width: int = 128,
    depth: int = 3,
    embed_dim: int = 32,
    sde: Any = None,
    context_dim: int = 0,
    key: Any = None,
) -> Any:
    """An MLP score network for ``dim``-vectors: torch ``nn.Module``, or equinox when ``key`` is given;
    ``context_dim > 0`` makes it conditional, called as ``net(x, t, c)`` with ``c`` of shape ``(B, context_dim)``."""
    sde = None if sde is None else as_sde(sde)
    if key is None:
        return _torch_classes()[0](dim, width, depth, embed_dim, sde, int(context_dim))
    return _eqx_classes()[0](dim, width, depth, embed_dim, sde, int(context_dim), key=key)


def ScoreUNet(  # noqa: N802 - a network constructor
    channels: int,
    height: int,
    width: int,
    *,
    features: int = 32,
    embed_dim: int = 32,
    sde: Any = None,
    key: Any = None,
) -> Any:
    """A small U-Net score network for ``(channels, height, width)`` images (torch, or equinox with ``key``)."""
    sde = None if sde is None else as_sde(sde)
    if key is None:
        return _torch_classes()[1](channels, height, width, features, embed_dim, sde)
    return _eqx_classes()[1](channels, height, width, features, embed_dim, sde, key=key)


# ---------------------------------------------------------------------------- torch
@functools.cache
def _torch_classes() -> tuple:
    import torch
    import torch.nn as nn

    def embed(t: torch.Tensor, embed_dim: int) -> torch.Tensor:
        w = _frequencies(embed_dim, torch).to(t)
        a = t[:, None] * w
        return torch.cat([torch.sin(a), torch.cos(a)], -1)

    def scale(h: torch.Tensor, t: torch.Tensor, sde: Any) -> torch.Tensor:
        if sde is None:
            return h
        return h / sde.marginal(t.to(h.dtype))[1].reshape(-1, *[1] * (h.dim() - 1))

    class TorchScoreMLP(nn.Module):
        """``s(x, t) = MLP([x, e(t)])``, or ``s(x, t, c) = MLP([x, e(t), c])`` with a context."""

        def __init__(self, dim: int, width: int, depth: int, embed_dim: int, sde: Any, context_dim: int = 0):
            super().__init__()
            self.event_shape, self.embed_dim, self.sde = (dim,), embed_dim, sde
            self.context_dim = context_dim
            layers: list[nn.Module] = []
            d = dim + 2 * (embed_dim // 2) + context_dim
            for _ in range(depth):
                layers += [nn.Linear(d, width), nn.SiLU()]
                d = width
            layers.append(nn.Linear(d, dim))
            self.net = nn.Sequential(*layers)

        def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
            parts = [x, embed(t, self.embed_dim)]
            if self.context_dim:
                if c is None:
                    raise TypeError("this ScoreMLP is conditional (context_dim > 0): call it as net(x, t, c).")
                parts.append(c.reshape(x.shape[0], -1).to(x.dtype))
            return scale(self.net(torch.cat(parts, -1)), t, self.sde)

    class TorchScoreUNet(nn.Module):
        """conv -> down(stride 2) -> mid -> up(transposed) -> [skip] -> conv; ``+ W e(t)`` per block."""

        def __init__(self, c: int, h: int, w: int, f: int, embed_dim: int, sde: Any):
            super().__init__()
            self.event_shape, self.embed_dim, self.sde = (c, h, w), embed_dim, sde
            e = 2 * (embed_dim // 2)
            self.t1, self.t2, self.t3 = nn.Linear(e, f), nn.Linear(e, 2 * f), nn.Linear(e, f)
            self.inp = nn.Conv2d(c, f, 3, padding=1)
            self.down = nn.Conv2d(f, 2 * f, 3, stride=2, padding=1)
            self.mid = nn.Conv2d(2 * f, 2 * f, 3, padding=1)
            self.up = nn.ConvTranspose2d(2 * f, f, 4, stride=2, padding=1)
            self.out = nn.Conv2d(2 * f, c, 3, padding=1)
            self.act = nn.SiLU()

        def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            e = embed(t, self.embed_dim)
            h1 = self.act(self.inp(x) + self.t1(e)[:, :, None, None])
            h2 = self.act(self.down(h1) + self.t2(e)[:, :, None, None])
            h2 = self.act(self.mid(h2))
            h3 = self.act(self.up(h2) + self.t3(e)[:, :, None, None])
            return scale(self.out(torch.cat([h3, h1], 1)), t, self.sde)

    return TorchScoreMLP, TorchScoreUNet


# ---------------------------------------------------------------------------- equinox
@functools.cache
def _eqx_classes() -> tuple:
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    def embed(t: Any, embed_dim: int) -> Any:
        a = t[:, None] * _frequencies(embed_dim, jnp).astype(t.dtype)
        return jnp.concatenate([jnp.sin(a), jnp.cos(a)], -1)

    def scale(h: Any, t: Any, sde: Any) -> Any:
        if sde is None:
            return h
        return h / sde.marginal(t.astype(h.dtype))[1].reshape(-1, *[1] * (h.ndim - 1))

    class EqxScoreMLP(eqx.Module):
        """``s(x, t) = MLP([x, e(t)])`` on a batch, or ``s(x, t, c) = MLP([x, e(t), c])`` with a context."""

        mlp: eqx.nn.MLP
        event_shape: tuple = eqx.field(static=True)
        embed_dim: int = eqx.field(static=True)
        sde: Any = eqx.field(static=True)
        context_dim: int = eqx.field(static=True)

        def __init__(
            self, dim: int, width: int, depth: int, embed_dim: int, sde: Any, context_dim: int = 0, *, key: Any
        ):
            self.event_shape, self.embed_dim, self.sde, self.context_dim = (dim,), embed_dim, sde, context_dim
            d_in = dim + 2 * (embed_dim // 2) + context_dim
            self.mlp = eqx.nn.MLP(d_in, dim, width, depth, activation=jax.nn.silu, key=key)

        def __call__(self, x: Any, t: Any, c: Any = None) -> Any:
            parts = [x, embed(t, self.embed_dim).astype(x.dtype)]
            if self.context_dim:
                if c is None:
                    raise TypeError("this ScoreMLP is conditional (context_dim > 0): call it as net(x, t, c).")
                parts.append(c.reshape(x.shape[0], -1).astype(x.dtype))
            return scale(jax.vmap(self.mlp)(jnp.concatenate(parts, -1)), t, self.sde)

    class EqxScoreUNet(eqx.Module):
        """The equinox twin of the torch ``ScoreUNet``."""

        t1: eqx.nn.Linear
        t2: eqx.nn.Linear
        t3: eqx.nn.Linear
        inp: eqx.nn.Conv2d
        down: eqx.nn.Conv2d
        mid: eqx.nn.Conv2d
        up: eqx.nn.ConvTranspose2d
        out: eqx.nn.Conv2d
        event_shape: tuple = eqx.field(static=True)
        embed_dim: int = eqx.field(static=True)
        sde: Any = eqx.field(static=True)

        def __init__(self, c: int, h: int, w: int, f: int, embed_dim: int, sde: Any, *, key: Any):
            self.event_shape, self.embed_dim, self.sde = (c, h, w), embed_dim, sde
            e = 2 * (embed_dim // 2)
            ks = jax.random.split(key, 8)
            self.t1, self.t2, self.t3 = (
                eqx.nn.Linear(e, f, key=ks[0]),
                eqx.nn.Linear(e, 2 * f, key=ks[1]),
                (eqx.nn.Linear(e, f, key=ks[2])),
            )
            self.inp = eqx.nn.Conv2d(c, f, 3, padding=1, key=ks[3])
            self.down = eqx.nn.Conv2d(f, 2 * f, 3, stride=2, padding=1, key=ks[4])
            self.mid = eqx.nn.Conv2d(2 * f, 2 * f, 3, padding=1, key=ks[5])
            self.up = eqx.nn.ConvTranspose2d(2 * f, f, 4, stride=2, padding=1, key=ks[6])
            self.out = eqx.nn.Conv2d(2 * f, c, 3, padding=1, key=ks[7])

        def _one(self, x: Any, e: Any) -> Any:
            act = jax.nn.silu
            h1 = act(self.inp(x) + self.t1(e)[:, None, None])
            h2 = act(self.down(h1) + self.t2(e)[:, None, None])
            h2 = act(self.mid(h2))
            h3 = act(self.up(h2) + self.t3(e)[:, None, None])
            return self.out(jnp.concatenate([h3, h1], 0))

        def __call__(self, x: Any, t: Any) -> Any:
            return scale(jax.vmap(self._one)(x, embed(t, self.embed_dim).astype(x.dtype)), t, self.sde)

    return EqxScoreMLP, EqxScoreUNet
