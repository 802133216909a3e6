"""Normalising flows ``x = f(z)`` for both engines, usable as the ``g`` of ``gm.models.Pushforward``.

``log p(x) = log p_z(f^{-1}(x)) + log|det J_{f^{-1}}(x)|`` (change of variables). Each
constructor stacks ``layers`` bijections with a coordinate reversal between consecutive ones:

- ``spline_coupling``: rational-quadratic spline couplings (Durkan et al., 2019);
- ``affine_coupling``: affine couplings, RealNVP (Dinh et al., 2017);
- ``affine_autoregressive``, ``spline_autoregressive`` (Pyro only): MADE-conditioned layers in the
  MAF direction (Papamakarios et al., 2017): the density is one network pass, sampling ``dim``.

On Pyro they are Pyro's own transforms (``pyro.distributions.transforms``) in a
``ComposeTransformModule`` — register it with ``pyro.module("flow", f)``. On NumPyro they are an
equinox ``CouplingFlow`` (``gmppl.models.coupling_jax``, the same layers as Pyro's) — register it
with ``numpyro.contrib.module.eqx_module("flow", f)``. Example (Pyro)::

    f = gm.models.flows.spline_coupling(2, layers=4, hidden=(64, 64))

    def model(x=None, n=None):
        pyro.module("flow", f)
        base = dist.Normal(torch.zeros(2), 1.0).to_event(1)
        with pyro.plate("data", x.shape[0] if x is not None else n):
            pyro.sample("x", gm.models.Pushforward(base, f), obs=x)

and on NumPyro ``spline_coupling(2, engine="numpyro")`` with ``g = eqx_module("flow", f)``.
Everything about a flow's structure is deterministic (no random permutations), so a flow built
again in another process has the same shape and meaning, and ``gm.load`` restores its weights.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, cast

from gmppl.errors import NotSupported, UnknownName

ENGINES = ("pyro", "numpyro")
SMOOTH_ACTIVATIONS = ("tanh", "silu")
SMOOTH_FLOW = "gm.models.flows.affine_coupling(dim, activation='tanh')"
_KINKED = ("ReLU", "LeakyReLU", "ReLU6", "PReLU", "Hardtanh")


def _hidden(hidden: int | Sequence[int]) -> list[int]:
    return [int(hidden)] * 2 if isinstance(hidden, int) else [int(h) for h in hidden]


def _check(name: str, dim: int, engine: str, layers: int, *, coupling: bool) -> None:
    if engine not in ENGINES:
        raise UnknownName(f"engine={engine!r} is unknown; use one of {ENGINES}.")
    if not isinstance(dim, int) or dim < (2 if coupling else 1):
        raise ValueError(f"{name}: dim={dim!r} must be an integer >= {2 if coupling else 1}.")
    if not isinstance(layers, int) or layers < 1:
        raise ValueError(f"{name}: layers={layers!r} must be a positive integer.")


# ---------------------------------------------------------------------- Pyro
@functools.cache
def _torch_classes() -> tuple[type, type]:
    import torch
    from pyro.distributions.torch_transform import ComposeTransformModule
    from torch.distributions import constraints

    class Reverse(torch.distributions.Transform):
        """``x[..., ::-1]``: a volume-preserving permutation, the same on any device."""

        domain = constraints.real_vector
        codomain = constraints.real_vector
        bijective = True

        def __init__(self, cache_size: int = 1):
            super().__init__(cache_size=cache_size)  # a cache keeps the compose's log-det pass cached

        def __eq__(self, other: object) -> bool:
            return isinstance(other, Reverse)

        def __hash__(self) -> int:
            return hash(Reverse)

        def _call(self, x: torch.Tensor) -> torch.Tensor:
            return x.flip(-1)

        def _inverse(self, y: torch.Tensor) -> torch.Tensor:
            return y.flip(-1)

        def log_abs_det_jacobian(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return x.new_zeros(x.shape[:-1])

        def with_cache(self, cache_size: int = 1) -> Reverse:
            return Reverse(cache_size)

    class TorchFlow(ComposeTransformModule):
        """Pyro transforms composed in order, parameters registered (also those of inverted parts)."""

        def __init__(self, parts: list, cache_size: int = 0):
            super().__init__(parts, cache_size=cache_size)
            for part in parts:
                inner = getattr(part, "_inv", None)
                if not isinstance(part, torch.nn.Module) and isinstance(inner, torch.nn.Module):
                    self.append(inner)

        def with_cache(self, cache_size: int = 1) -> TorchFlow:
            return self if cache_size == self._cache_size else TorchFlow(self.parts, cache_size=cache_size)

    return Reverse, TorchFlow


def _stack(make: Callable[[], Any], layers: int, *, invert: bool = False) -> Any:
    reverse, torch_flow = _torch_classes()
    parts: list[Any] = []
    for i in range(layers):
        if i:
            parts.append(reverse())
        layer = make()
        parts.append(layer.inv if invert else layer)
    return torch_flow(parts)


def _pyro_spline_coupling(dim: int, layers: int, hidden: list[int], bins: int, bound: float) -> Any:
    from pyro.distributions.transforms import SplineCoupling
    from pyro.nn import DenseNN

    split = dim // 2
    rest = dim - split

    def make() -> Any:
        net = DenseNN(split, hidden, param_dims=[rest * bins, rest * bins, rest * (bins - 1)])
        layer = SplineCoupling(dim, split, net, count_bins=bins, bound=bound, order="quadratic", identity=True)
        del layer.lower_spline  # unused with identity=True: drop it so every registered parameter is used
        return layer

    return _stack(make, layers)


def _torch_activation(activation: str) -> Any:
    import torch

    return {"relu": torch.nn.ReLU, "tanh": torch.nn.Tanh, "silu": torch.nn.SiLU}[activation]()


def _pyro_affine_coupling(dim: int, layers: int, hidden: list[int], activation: str = "relu") -> Any:
    from pyro.distributions.transforms import AffineCoupling
    from pyro.nn import DenseNN

    split = dim // 2

    def make() -> Any:
        net = DenseNN(split, hidden, param_dims=[dim - split, dim - split], nonlinearity=_torch_activation(activation))
        return AffineCoupling(split, net)

    return _stack(make, layers)


def _pyro_affine_autoregressive(dim: int, layers: int, hidden: list[int]) -> Any:
    import torch
    from pyro.distributions.transforms import AffineAutoregressive
    from pyro.nn import AutoRegressiveNN

    def make() -> Any:
        order = cast(torch.LongTensor, torch.arange(dim))  # an int64 tensor; Pyro types it as the legacy class
        return AffineAutoregressive(AutoRegressiveNN(dim, hidden, permutation=order))

    return _stack(make, layers, invert=True)


def _pyro_spline_autoregressive(dim: int, layers: int, hidden: list[int], bins: int, bound: float) -> Any:
    import torch
    from pyro.distributions.transforms import SplineAutoregressive
    from pyro.nn import AutoRegressiveNN

    def make() -> Any:
        order = cast(torch.LongTensor, torch.arange(dim))  # an int64 tensor; Pyro types it as the legacy class
        net = AutoRegressiveNN(dim, hidden, param_dims=[bins, bins, bins - 1], permutation=order)
        return SplineAutoregressive(dim, net, count_bins=bins, bound=bound, order="quadratic")

    return _stack(make, layers, invert=True)


# ---------------------------------------------------------------------- public constructors
def _jax_key(key: Any) -> Any:
    import jax

    if key is None:
        return jax.random.PRNGKey(0)
    return jax.random.PRNGKey(key) if isinstance(key, int) else key


def spline_coupling(
    dim: int,
    *,
    engine: str = "pyro",
    layers: int = 4,
    hidden: int | Sequence[int] = (64, 64),
    bins: int = 8,
    bound: float = 3.0,
    key: Any = None,
) -> Any:
    """Rational-quadratic spline coupling flow: ``bins`` bins on ``[-bound, bound]``, identity outside.

    Each layer keeps ``x[:dim//2]`` and maps the rest through monotone splines whose widths, heights
    and knot derivatives an MLP (``hidden`` widths, ReLU) computes from the kept half. Pyro: a
    ``ComposeTransformModule`` of ``SplineCoupling(order="quadratic")``; NumPyro: a ``CouplingFlow``
    initialised from ``key`` (an int or a PRNG key; default 0).
    """
    _check("spline_coupling", dim, engine, layers, coupling=True)
    if engine == "pyro":
        return _pyro_spline_coupling(dim, layers, _hidden(hidden), bins, bound)
    from gmppl.models.coupling_jax import coupling_flow

    return coupling_flow(
        dim, kind="spline", layers=layers, hidden=_hidden(hidden), key=_jax_key(key), bins=bins, bound=bound
    )


def affine_coupling(
    dim: int,
    *,
    engine: str = "pyro",
    layers: int = 4,
    hidden: int | Sequence[int] = (64, 64),
    key: Any = None,
    activation: str = "relu",
) -> Any:
    """Affine (RealNVP) coupling flow: ``y_2 = exp(s(x_1)) x_2 + t(x_1)``, ``s`` clipped to ``[-5, 3]``.

    ``activation`` of the coupling networks: ``"relu"`` (default), or ``"tanh"``/``"silu"`` for a flow whose
    log-density is smooth, as score matching needs (``Score(method="sliced")`` warns of the ReLU flow and spline
    flows, whose scores jump). Pyro: a ``ComposeTransformModule`` of ``AffineCoupling``; NumPyro: a ``CouplingFlow``.
    """
    _check("affine_coupling", dim, engine, layers, coupling=True)
    if activation not in SMOOTH_ACTIVATIONS + ("relu",):
        raise UnknownName(f"affine_coupling(activation={activation!r}) is unknown; use relu, tanh or silu.")
    if engine == "pyro":
        return _pyro_affine_coupling(dim, layers, _hidden(hidden), activation)
    from gmppl.models.coupling_jax import coupling_flow

    return coupling_flow(
        dim, kind="affine", layers=layers, hidden=_hidden(hidden), key=_jax_key(key), activation=activation
    )


def _pyro_only(name: str, engine: str) -> None:
    if engine != "pyro":
        raise NotSupported(
            f"{name} is available for engine='pyro' only; on NumPyro use spline_coupling or affine_coupling "
            "(engine='numpyro'), or numpyro.distributions.flows with your own network."
        )


def affine_autoregressive(
    dim: int, *, engine: str = "pyro", layers: int = 4, hidden: int | Sequence[int] = (64, 64), key: Any = None
) -> Any:
    """Masked autoregressive flow (MAF) of Pyro's ``AffineAutoregressive`` layers, inverted.

    ``z_i = (x_i - mu_i(x_{<i})) exp(-s_i(x_{<i}))``: the density is one MADE pass, sampling ``dim``.
    """
    _check("affine_autoregressive", dim, engine, layers, coupling=False)
    _pyro_only("affine_autoregressive", engine)
    return _pyro_affine_autoregressive(dim, layers, _hidden(hidden))


def spline_autoregressive(
    dim: int,
    *,
    engine: str = "pyro",
    layers: int = 4,
    hidden: int | Sequence[int] = (64, 64),
    bins: int = 8,
    bound: float = 3.0,
    key: Any = None,
) -> Any:
    """Autoregressive rational-quadratic spline flow (Pyro's ``SplineAutoregressive``), in the MAF direction."""
    _check("spline_autoregressive", dim, engine, layers, coupling=False)
    _pyro_only("spline_autoregressive", engine)
    return _pyro_spline_autoregressive(dim, layers, _hidden(hidden), bins, bound)


def nonsmooth_parts(d: Any) -> list[str]:
    """The parts of a distribution's flow whose log-density gradient (score) jumps: rational-quadratic spline
    transforms (only C^1) and coupling/autoregressive networks with ReLU-type activations (piecewise linear).

    Walks the wrappers (``base_dist``), a ``TransformedDistribution``'s transforms, composed (``parts``), inverted
    (``_inv``) and gmppl's JAX coupling flows (``flow.layers``); Pyro and NumPyro transforms alike. A network the
    walk does not know (a user's own callable) is not judged.
    """
    found: list[str] = []
    seen: set[int] = set()

    def visit(o: Any, depth: int = 0) -> None:
        if o is None or id(o) in seen or depth > 32:
            return
        seen.add(id(o))
        name = type(o).__name__
        if "Spline" in name:
            found.append(f"a rational-quadratic spline transform ({name})")
            return
        if name == "Coupling" and hasattr(o, "kind"):  # gmppl's JAX coupling layer
            if o.kind == "spline":
                found.append("a rational-quadratic spline coupling (gm.models.flows.spline_coupling)")
            elif getattr(o.net, "activation", None) not in SMOOTH_ACTIVATIONS:
                found.append(f"an affine coupling with {o.net.activation} networks (piecewise linear)")
            return
        for net_attr in ("hypernet", "arn", "nn"):  # Pyro's AffineCoupling / AffineAutoregressive networks
            act = getattr(getattr(o, net_attr, None), "f", None)
            if act is not None and type(act).__name__ in _KINKED:
                found.append(f"{name} with {type(act).__name__} networks (piecewise linear)")
                return
        for attr in ("base_dist", "transforms", "parts", "_inv", "flow", "layers"):
            child = getattr(o, attr, None)
            for c in child if isinstance(child, list | tuple) else [child]:
                visit(c, depth + 1)

    visit(d)
    return list(dict.fromkeys(found))


FLOWS: dict[str, Callable[..., Any]] = {
    "spline_coupling": spline_coupling,
    "affine_coupling": affine_coupling,
    "affine_autoregressive": affine_autoregressive,
    "spline_autoregressive": spline_autoregressive,
}


def available(engine: str) -> tuple[str, ...]:
    """Names of the flows built for ``engine``."""
    if engine == "pyro":
        return tuple(FLOWS)
    return ("spline_coupling", "affine_coupling")


__all__ = [
    "FLOWS",
    "affine_autoregressive",
    "affine_coupling",
    "available",
    "nonsmooth_parts",
    "spline_autoregressive",
    "spline_coupling",
]
