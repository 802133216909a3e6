"""``ContinuousFlow(velocity_net)``: the law of ``x(1)`` under ``dx/dt = v(x, t)``, ``x(0) ~ N(0, I)``.

A continuous normalising flow (Chen et al. 2018; Grathwohl et al. 2019) as a Pyro or NumPyro distribution,
fit by flow matching (``gm.inference.FlowMatching``):

* ``sample`` pushes ``z ~ N(0, I)`` from ``t = 0`` to ``t = 1`` with an ODE solver: adaptive Dopri5
  (``solver="dopri5"``, the default, at ``rtol``/``atol``) or a fixed grid of ``steps`` Euler, Heun or
  midpoint steps (``solver="euler" | "heun" | "midpoint"``: 1, 2 and 2 velocity evaluations a step).
  torchdiffeq on torch, diffrax on JAX.
* ``log_prob`` is exact by the instantaneous change of variables,
  ``log p_1(x) = log N(x(0); 0, I) - int_0^1 div_x v(x(t), t) dt``, solved backwards from
  ``x(1) = x`` to ``t = 0`` with adaptive Dopri5, the divergence exact (``trace="exact"``, one
  Jacobian-vector product per dimension) or Hutchinson's unbiased ``div = E[e^T J e]`` with Rademacher
  ``e`` (``trace="hutchinson"``; ``log_prob_estimate`` returns the mean over ``probes`` probes and its
  standard error). ``trace="auto"`` is exact up to ``exact_trace_max_dim`` dimensions.
* ``invert(x)`` is ``x(0)`` for ``x(1) = x`` (the latent of ``x``, exactly, up to the solver tolerance).

The network is called on batches, ``velocity_net(x, t)`` with ``x`` of shape ``(batch, *event_shape)`` and
``t`` of shape ``(batch,)`` in ``[0, 1]``; with ``context=c`` (one row per example) it is called as
``velocity_net(x, t, c)``, the distribution's ``batch_shape`` being the rows of ``c``. Register the network
with ``pyro.module``/``eqx_module`` in the program.

Example::

    v = gm.models.ScoreMLP(2)       # any net(x, t) -> R^2 will do
    def model(x=None, n=None):
        net = pyro.module("velocity", v)
        with pyro.plate("data", x.shape[0] if x is not None else n):
            pyro.sample("x", gm.models.ContinuousFlow(net), obs=x)
    fit = gm.fit(model, x, gm.inference.FlowMatching())
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

from gmppl.errors import ModelError, UnknownName

SOLVERS = ("dopri5", "euler", "heun", "midpoint")
TRACES = ("auto", "exact", "hutchinson")
#: Velocity evaluations per step of each fixed-step solver.
STAGES = {"euler": 1, "heun": 2, "midpoint": 2}


@dataclass(frozen=True)
class FlowOptions:
    """How a ``ContinuousFlow`` samples and evaluates its likelihood (shared by both engines)."""

    solver: str = "dopri5"
    steps: int = 100
    rtol: float = 1e-5
    atol: float = 1e-5
    trace: str = "auto"
    probes: int = 1
    exact_trace_max_dim: int = 16
    max_steps: int = 4096

    def __post_init__(self) -> None:
        if self.solver not in SOLVERS:
            raise UnknownName(f"solver={self.solver!r} is unknown; use one of {SOLVERS}.")
        if self.trace not in TRACES:
            raise UnknownName(f"trace={self.trace!r} is unknown; use one of {TRACES}.")
        for name in ("steps", "probes", "exact_trace_max_dim", "max_steps"):
            if not _positive_int(getattr(self, name)):
                raise ModelError(f"ContinuousFlow({name}={getattr(self, name)!r}) must be a positive integer.")
            object.__setattr__(self, name, int(getattr(self, name)))  # numpy integers in, hashable ints kept
        for name in ("rtol", "atol"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < float(value) < math.inf:
                raise ModelError(f"ContinuousFlow({name}={value!r}) must be a positive number.")
            object.__setattr__(self, name, float(value))

    def trace_and_probes(self, dim: int, trace: str | None = None, probes: int | None = None) -> tuple[bool, int]:
        """Whether the divergence is traced exactly for ``dim`` dimensions, and the Hutchinson probes (1 if exact)."""
        trace = trace or self.trace
        if trace not in TRACES:
            raise UnknownName(f"trace={trace!r} is unknown; use one of {TRACES}.")
        exact = trace == "exact" or (trace == "auto" and dim <= self.exact_trace_max_dim)
        probes = self.probes if probes is None else probes
        if not _positive_int(probes):
            raise ModelError(f"probes={probes!r} must be a positive integer.")
        return exact, 1 if exact else int(probes)

    def solver_and_steps(self, solver: str | None, steps: int | None) -> tuple[str, int]:
        """The sampling solver and its number of steps, defaults from these options (checked)."""
        solver = solver or self.solver
        steps = self.steps if steps is None else steps
        if solver not in SOLVERS:
            raise UnknownName(f"solver={solver!r} is unknown; use one of {SOLVERS}.")
        if not _positive_int(steps):
            raise ModelError(f"steps={steps!r} must be a positive integer.")
        return solver, int(steps)


def ContinuousFlow(  # noqa: N802 - a distribution constructor
    velocity_net: Any,
    context: Any = None,
    *,
    event_shape: tuple[int, ...] | None = None,
    solver: str = "dopri5",
    steps: int = 100,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    trace: str = "auto",
    probes: int = 1,
    exact_trace_max_dim: int = 16,
) -> Any:
    """A continuous normalising flow with velocity ``velocity_net``: a Pyro ``TorchDistribution`` for a torch
    ``nn.Module``, a NumPyro ``Distribution`` for an equinox module or any JAX callable.

    ``event_shape`` is read from ``velocity_net.event_shape`` when the network has one, else found by
    calling the network on vectors of growing size; pass it for images. ``context`` (torch tensor or JAX
    array with one row per example) makes it conditional: ``velocity_net(x, t, context)``.
    """
    options = FlowOptions(
        solver=solver,
        steps=steps,
        rtol=rtol,
        atol=atol,
        trace=trace,
        probes=probes,
        exact_trace_max_dim=exact_trace_max_dim,
    )
    if _is_torch_module(velocity_net):
        from gmppl.models.continuous_flow_torch import TorchContinuousFlow, torch_event_shape

        context = _check_context(context, "torch")
        shape = _given_shape(event_shape) or torch_event_shape(velocity_net, context)
        batch = () if context is None else tuple(context.shape[:1])
        return TorchContinuousFlow(velocity_net, shape, batch, options, context=context)
    if not callable(velocity_net):
        raise ModelError(
            f"velocity_net={velocity_net!r} is not callable; pass a torch nn.Module, an equinox module or a JAX "
            "function called as velocity_net(x, t) (velocity_net(x, t, c) with context=c)."
        )
    from gmppl.models.continuous_flow_jax import JaxContinuousFlow, jax_event_shape

    context = _check_context(context, "jax")
    shape = _given_shape(event_shape) or jax_event_shape(velocity_net, context)
    batch = () if context is None else tuple(context.shape[:1])
    return JaxContinuousFlow(velocity_net, shape, batch, options, context=context)


def find_flow(fn: Any) -> Any:
    """The ``ContinuousFlow`` inside a site's distribution (through ``Independent``/``Masked``/expand wrappers)."""
    d = fn
    while d is not None and not getattr(type(d), "gmppl_velocity_model", False):
        d = getattr(d, "base_dist", None)
    return d


def probe_shape(call: Any, max_dim: int = 256) -> tuple[int, ...]:
    """Smallest ``d`` with ``call(d)`` returning shape ``(1, d)``: the vector size the network takes."""
    for d in range(1, max_dim + 1):
        try:
            out = call(d)
        except Exception:  # noqa: BLE001 - a wrong size raises whatever the network raises
            continue
        if tuple(out) == (1, d):
            return (d,)
    raise ModelError(
        "could not find the data shape the velocity network takes (tried vectors of size 1.."
        f"{max_dim}); pass ContinuousFlow(velocity_net, event_shape=(...)) or give the network an "
        "event_shape attribute."
    )


def check_field(out: Any, x: Any, name: str) -> None:
    """Refuse a network whose field ``out`` (a velocity or score, found on abstract values) is not shaped as
    its input ``x``: an ODE or SDE could not integrate it."""
    if tuple(out.shape) != tuple(x.shape):
        raise ModelError(
            f"the {name} network maps a batch of shape {tuple(x.shape)} to shape {tuple(out.shape)}; it must return "
            f"one {name} per example, shaped as its input."
        )


def check_context_rows(rows: tuple[int, ...], batch_shape: tuple[int, ...]) -> None:
    """Refuse context rows ``rows`` (the context's batch dims) that do not broadcast to ``batch_shape``."""
    ok = len(rows) <= len(batch_shape) and all(
        r in (1, b) for r, b in zip(reversed(rows), reversed(batch_shape), strict=False)
    )
    if not ok:
        raise ModelError(
            f"context has rows of shape {rows} but the flow's batch shape is {batch_shape}: pass one context row "
            "per example (inside plate('data', n), n rows)."
        )


def _positive_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and int(value) >= 1


def _given_shape(event_shape: Any) -> tuple[int, ...] | None:
    if event_shape is None:
        return None
    shape = tuple(int(s) for s in event_shape)
    if not shape or any(s < 1 for s in shape):
        raise ModelError(f"event_shape={event_shape!r} must be a non-empty tuple of positive sizes.")
    return shape


def _check_context(context: Any, library: str) -> Any:
    if context is None:
        return None
    if not hasattr(context, "shape") or len(context.shape) < 1 or context.shape[0] < 1:
        raise ModelError(
            f"context must be an array with one row per example (shape (n, ...)); got {type(context).__name__} "
            f"of shape {getattr(context, 'shape', None)}."
        )
    if library == "torch":
        import torch

        if not isinstance(context, torch.Tensor):
            raise ModelError(
                "a torch velocity network takes a torch tensor as context; convert it with torch.as_tensor."
            )
        return context
    import jax.numpy as jnp

    return jnp.asarray(context)


def _is_torch_module(net: Any) -> bool:
    import sys

    if "torch" not in sys.modules:
        return False
    import torch

    return isinstance(net, torch.nn.Module)
