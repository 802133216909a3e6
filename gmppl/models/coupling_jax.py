"""Coupling flows in JAX (equinox): rational-quadratic spline and affine (RealNVP) couplings.

Neither NumPyro (autoregressive flows only, on stax networks) nor a dependency we carry offers
coupling flows on equinox, so this is a compact one that mirrors Pyro's layers exactly (same
parameterisation, same clipping), so the same model is the same model on both engines.

A coupling layer splits ``x = (x_1, x_2)`` at ``split`` and maps ``x_2`` elementwise by a
monotone bijection whose parameters come from a network of ``x_1``:

- affine (Dinh et al., 2017): ``y_2 = exp(s(x_1)) * x_2 + t(x_1)``, ``log|det J| = sum s``;
- rational-quadratic spline (Durkan et al., 2019): ``K`` bins on ``[-B, B]``, identity outside.

Layers alternate with a reversal of the coordinates. ``CouplingFlow`` maps base ``z`` to ``x``;
``gmppl_transform()`` wraps it as a NumPyro ``Transform`` for ``gm.models.Pushforward``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from numpyro.distributions import constraints
from numpyro.distributions.transforms import Transform

MIN_BIN = 1e-3  # Pyro's min_bin_width/height and min_derivative
MIN_DERIVATIVE = 1e-3
SEARCH_EPS = 1e-6
LOG_SCALE_CLIP = (-5.0, 3.0)  # Pyro's AffineCoupling clip


ACTIVATIONS = {"relu": jax.nn.relu, "tanh": jnp.tanh, "silu": jax.nn.silu}


class MLP(eqx.Module):
    """``Linear -> act -> ... -> Linear`` on one example, with any hidden widths (Pyro's ``DenseNN``);
    ``activation``: ``"relu"`` (default), or the smooth ``"tanh"`` / ``"silu"``."""

    layers: tuple[eqx.nn.Linear, ...]
    activation: str = eqx.field(static=True, default="relu")

    def __init__(self, sizes: Sequence[int], *, key: Any, activation: str = "relu"):
        keys = jax.random.split(key, len(sizes) - 1)
        self.layers = tuple(eqx.nn.Linear(a, b, key=k) for a, b, k in zip(sizes[:-1], sizes[1:], keys, strict=True))
        self.activation = activation

    def __call__(self, x: Any) -> Any:
        act = ACTIVATIONS[self.activation]
        for layer in self.layers[:-1]:
            x = act(layer(x))
        return self.layers[-1](x)


def _batched(net: MLP, x: Any) -> Any:
    """Apply a one-example network over all leading axes of ``x``."""
    flat = x.reshape(-1, x.shape[-1])
    out = jax.vmap(net)(flat)
    return out.reshape(*x.shape[:-1], out.shape[-1])


def _knots(lengths: Any, bound: float) -> tuple[Any, Any]:
    """Bin lengths summing to 1 -> (lengths, knot positions) on ``[-B, B]`` (Pyro's ``_calculate_knots``)."""
    knots = jnp.cumsum(lengths, axis=-1)
    knots = jnp.concatenate([jnp.zeros_like(knots[..., :1]), knots], axis=-1)
    knots = 2 * bound * knots - bound
    knots = knots.at[..., 0].set(-bound).at[..., -1].set(bound)
    return knots[..., 1:] - knots[..., :-1], knots


def rq_spline(x: Any, uw: Any, uh: Any, ud: Any, *, bound: float, inverse: bool = False) -> tuple[Any, Any]:
    """Monotone rational-quadratic spline (Durkan et al., 2019), elementwise, identity outside ``[-B, B]``.

    ``x``: ``(..., D)``; unnormalised widths ``uw`` and heights ``uh``: ``(..., D, K)``; interior
    derivatives ``ud``: ``(..., D, K-1)``. Widths/heights are ``softmax`` with a floor, derivatives
    ``softplus + 1e-3``, the end derivatives fixed (linear tails). In bin ``k`` with
    ``theta = (x - x_k)/w_k``, ``s_k = h_k/w_k``::

        y = y_k + h_k (s_k theta^2 + d_k theta(1-theta)) / (s_k + (d_k + d_{k+1} - 2 s_k) theta(1-theta))

    Returns ``(y, log|dy/dx|)``; with ``inverse=True`` it solves for ``x`` (a quadratic) and returns
    ``(x, log|dx/dy|)``.
    """
    k = uw.shape[-1]
    w = MIN_BIN + (1 - MIN_BIN * k) * jax.nn.softmax(uw, axis=-1)
    h = MIN_BIN + (1 - MIN_BIN * k) * jax.nn.softmax(uh, axis=-1)
    d = MIN_DERIVATIVE + jax.nn.softplus(ud)
    w, cw = _knots(w, bound)
    h, ch = _knots(h, bound)
    pad = jnp.full(d.shape[:-1] + (1,), 1.0 - MIN_DERIVATIVE, d.dtype)
    d = jnp.concatenate([pad, d, pad], axis=-1)

    inside = (x >= -bound) & (x <= bound)
    xs = jnp.where(inside, x, 0.0)  # a safe value outside, so no NaN reaches the gradient
    ref = ch if inverse else cw
    idx = jnp.clip(jnp.sum(xs[..., None] >= ref + SEARCH_EPS, axis=-1) - 1, 0, k - 1)
    onehot = (idx[..., None] == jnp.arange(k)).astype(x.dtype)  # a one-hot sum: far smaller programs than a gather

    def pick(a: Any) -> Any:
        return jnp.sum(a * onehot, axis=-1)

    wk, xk, yk, hk = pick(w), pick(cw[..., :k]), pick(ch[..., :k]), pick(h)
    sk, dk, dk1 = pick(h / w), pick(d[..., :-1]), pick(d[..., 1:])
    if inverse:
        a = (xs - yk) * (dk + dk1 - 2 * sk) + hk * (sk - dk)
        b = hk * dk - (xs - yk) * (dk + dk1 - 2 * sk)
        c = -sk * (xs - yk)
        disc = jnp.maximum(b**2 - 4 * a * c, 0.0)
        theta = (2 * c) / (-b - jnp.sqrt(disc))
        out = theta * wk + xk
    else:
        theta = (xs - xk) / wk
    t1t = theta * (1 - theta)
    denom = sk + (dk + dk1 - 2 * sk) * t1t
    dnum = sk**2 * (dk1 * theta**2 + 2 * sk * t1t + dk * (1 - theta) ** 2)
    logdet = jnp.log(dnum) - 2 * jnp.log(denom)
    if inverse:
        logdet = -logdet
    else:
        out = yk + hk * (sk * theta**2 + dk * t1t) / denom
    return jnp.where(inside, out, x), jnp.where(inside, logdet, 0.0)


def _clamp_preserve_gradients(x: Any, lo: float, hi: float) -> Any:
    return x + jax.lax.stop_gradient(jnp.clip(x, lo, hi) - x)


class Coupling(eqx.Module):
    """One coupling layer: ``x_1`` passes, ``x_2`` is mapped by an affine or spline bijection of ``x_1``."""

    net: MLP
    dim: int = eqx.field(static=True)
    split: int = eqx.field(static=True)
    kind: str = eqx.field(static=True)
    bins: int = eqx.field(static=True)
    bound: float = eqx.field(static=True)

    def __init__(
        self,
        dim: int,
        hidden: Sequence[int],
        *,
        kind: str,
        key: Any,
        bins: int = 8,
        bound: float = 3.0,
        activation: str = "relu",
    ):
        self.dim, self.split, self.kind, self.bins, self.bound = dim, dim // 2, kind, bins, bound
        rest = dim - self.split
        out = 2 * rest if kind == "affine" else rest * (3 * bins - 1)
        self.net = MLP([self.split, *hidden, out], key=key, activation=activation)

    def _transform(self, x: Any, inverse: bool) -> tuple[Any, Any]:
        x1, x2 = x[..., : self.split], x[..., self.split :]
        p = _batched(self.net, x1)
        rest = self.dim - self.split
        if self.kind == "affine":
            shift, log_scale = p[..., :rest], p[..., rest:]
            log_scale = _clamp_preserve_gradients(log_scale, *LOG_SCALE_CLIP)
            if inverse:
                y2, ld = (x2 - shift) * jnp.exp(-log_scale), -log_scale
            else:
                y2, ld = jnp.exp(log_scale) * x2 + shift, log_scale
        else:
            k = self.bins
            shape = p.shape[:-1] + (rest,)
            uw = p[..., : rest * k].reshape(*shape, k)
            uh = p[..., rest * k : 2 * rest * k].reshape(*shape, k)
            ud = p[..., 2 * rest * k :].reshape(*shape, k - 1)
            y2, ld = rq_spline(x2, uw, uh, ud, bound=self.bound, inverse=inverse)
        return jnp.concatenate([x1, y2], axis=-1), ld.sum(-1)

    def forward(self, x: Any) -> tuple[Any, Any]:
        """``(y, log|det dy/dx|)``."""
        return self._transform(x, inverse=False)

    def inverse(self, y: Any) -> tuple[Any, Any]:
        """``(x, log|det dx/dy|)``."""
        return self._transform(y, inverse=True)


class CouplingFlow(eqx.Module):
    """``x = f(z)``: coupling layers with a coordinate reversal between consecutive layers.

    ``log p(x) = log p_z(f^{-1}(x)) + log|det J_{f^{-1}}(x)|`` via ``inverse_and_log_det``.
    """

    layers: tuple[Coupling, ...]

    def __call__(self, z: Any) -> Any:
        return self.forward_and_log_det(z)[0]

    def forward_and_log_det(self, z: Any) -> tuple[Any, Any]:
        """``(f(z), log|det J_f(z)|)``."""
        ld = jnp.zeros(z.shape[:-1], z.dtype)
        for i, layer in enumerate(self.layers):
            if i:
                z = z[..., ::-1]
            z, l = layer.forward(z)
            ld = ld + l
        return z, ld

    def inverse_and_log_det(self, x: Any) -> tuple[Any, Any]:
        """``(f^{-1}(x), log|det J_{f^{-1}}(x)|)``."""
        ld = jnp.zeros(x.shape[:-1], x.dtype)
        for i, layer in reversed(list(enumerate(self.layers))):
            x, l = layer.inverse(x)
            ld = ld + l
            if i:
                x = x[..., ::-1]
        return x, ld

    def inverse(self, x: Any) -> Any:
        return self.inverse_and_log_det(x)[0]

    def gmppl_transform(self) -> FlowTransform:
        """This flow as a NumPyro ``Transform`` (what ``gm.models.Pushforward`` uses)."""
        return FlowTransform(self)


class FlowTransform(Transform):
    """A ``CouplingFlow`` as a NumPyro bijection on vectors.

    ``log_prob`` asks for ``x = f^{-1}(y)`` and then ``log|det J_f(x)|``: the inverse pass computes
    both, so the log-det of the last inversion is kept (keyed by the identity of ``x`` and ``y``, as
    Pyro's transforms cache) instead of running the flow a second time.
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector

    def __init__(self, flow: CouplingFlow):
        self.flow = flow
        self._last: tuple | None = None

    def __call__(self, x: Any) -> Any:
        return self.flow(x)

    def _inverse(self, y: Any) -> Any:
        x, ld = self.flow.inverse_and_log_det(y)
        self._last = (x, y, ld)
        return x

    def log_abs_det_jacobian(self, x: Any, y: Any, intermediates: Any = None) -> Any:
        last = getattr(self, "_last", None)
        if last is not None and last[0] is x and last[1] is y:
            return -last[2]
        return -self.flow.inverse_and_log_det(y)[1]

    def tree_flatten(self) -> tuple:
        return (self.flow,), (("flow",), {})


def coupling_flow(
    dim: int,
    *,
    kind: str,
    layers: int,
    hidden: Sequence[int],
    key: Any,
    bins: int = 8,
    bound: float = 3.0,
    activation: str = "relu",
) -> CouplingFlow:
    """``layers`` coupling layers of ``kind`` (``"spline"`` or ``"affine"``) on ``dim``-vectors, their networks
    with ``activation`` (``"relu"``, ``"tanh"``, ``"silu"``)."""
    keys = jax.random.split(key, layers)
    return CouplingFlow(
        tuple(
            Coupling(dim, hidden, kind=kind, key=k, bins=bins, bound=bound, activation=activation)
            for k in keys[:layers]
        )
    )
