"""``Diffusion(score_net, sde=...)``: the law of a score-based diffusion model, as a Pyro or NumPyro distribution.

A forward SDE ``dx = f(t) x dt + g(t) dW`` (``gmppl.models.sde``) turns data into ``N(0, s^2 I)`` at
``t = 1``; a network ``s_theta(x, t) ~ grad_x log p_t(x)`` lets one run it backwards (Song et al. 2021):

* reverse-time SDE ``dx = [f x - g^2 s_theta] dt + g dW_bar`` (``sampler="em"``: Euler–Maruyama;
  ``"pc"``: predictor–corrector with Langevin corrector steps at signal-to-noise ``snr``);
* probability-flow ODE ``dx/dt = f x - g^2 s_theta / 2`` (``sampler="ode"``: adaptive Dopri5, with
  torchdiffeq on torch and diffrax on JAX) — a deterministic pushforward of ``z ~ N(0, s^2 I)``.

``log_prob`` is the exact likelihood of the probability-flow ODE by the instantaneous change of
variables, ``log p_0(x_0) = log p_1(x_1) + int_eps^1 div_x f~(x_t, t) dt``, with the divergence exact
(``trace="exact"``, one Jacobian-vector product per dimension) or by Hutchinson's estimator
``div = E[v^T J v]``, ``v`` Rademacher (``trace="hutchinson"``; ``log_prob_estimate`` returns the
mean over ``probes`` independent probes and its standard error). ``trace="auto"`` is exact up to
``exact_trace_max_dim`` dimensions.

The network is called on batches, ``score_net(x, t)`` with ``x`` of shape ``(batch, *event_shape)``
and ``t`` of shape ``(batch,)`` in ``[0, 1]``; it is the only parameterised part, so register it with
``pyro.module``/``eqx_module`` in the program.

Example::

    s = gm.models.ScoreMLP(2)
    def model(x=None, n=None):
        net = pyro.module("score", s)
        with pyro.plate("data", x.shape[0] if x is not None else n):
            pyro.sample("x", gm.models.Diffusion(net, sde="vp"), obs=x)
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from typing import Any

from gmppl.errors import ModelError, UnknownName
from gmppl.models.sde import SDE, as_sde

SAMPLERS = ("em", "pc", "ode")
TRACES = ("auto", "exact", "hutchinson")


@dataclass(frozen=True)
class DiffusionOptions:
    """How a ``Diffusion`` samples and evaluates its likelihood (shared by both engines)."""

    sampler: str = "em"
    steps: int = 500
    snr: float = 0.16
    corrector_steps: int = 1
    rtol: float = 1e-5
    atol: float = 1e-5
    trace: str = "auto"
    probes: int = 1
    exact_trace_max_dim: int = 16
    max_steps: int = 4096

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise UnknownName(f"sampler={self.sampler!r} is unknown; use one of {SAMPLERS}.")
        if self.trace not in TRACES:
            raise UnknownName(f"trace={self.trace!r} is unknown; use one of {TRACES}.")
        if self.steps < 1 or self.probes < 1:
            raise ModelError(f"steps={self.steps} and probes={self.probes} must be positive.")

    def use_exact_trace(self, dim: int, trace: str | None = None) -> bool:
        trace = trace or self.trace
        return trace == "exact" or (trace == "auto" and dim <= self.exact_trace_max_dim)


def _is_torch_module(net: Any) -> bool:
    if "torch" not in sys.modules:
        return False
    import torch

    return isinstance(net, torch.nn.Module)


def Diffusion(  # noqa: N802 - a distribution constructor
    score_net: Any,
    sde: str | SDE = "vp",
    *,
    event_shape: tuple[int, ...] | None = None,
    sampler: str = "em",
    steps: int = 500,
    snr: float = 0.16,
    corrector_steps: int = 1,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    trace: str = "auto",
    probes: int = 1,
    exact_trace_max_dim: int = 16,
    **sde_kwargs: Any,
) -> Any:
    """A diffusion model with score network ``score_net``: a Pyro ``TorchDistribution`` for a torch
    ``nn.Module``, a NumPyro ``Distribution`` for an equinox module, a flax apply function or any JAX callable.

    ``event_shape`` is read from ``score_net.event_shape`` when the network has one (the default
    networks do), else found by calling the network on vectors of growing size; pass it for images.
    ``sde_kwargs`` set the SDE's ``beta_min``/``beta_max`` (VP, sub-VP) or ``sigma_min``/``sigma_max`` (VE).
    """
    options = DiffusionOptions(
        sampler=sampler,
        steps=int(steps),
        snr=float(snr),
        corrector_steps=int(corrector_steps),
        rtol=float(rtol),
        atol=float(atol),
        trace=trace,
        probes=int(probes),
        exact_trace_max_dim=int(exact_trace_max_dim),
    )
    sde = as_sde(sde, **sde_kwargs)
    if _is_torch_module(score_net):
        from gmppl.models.diffusion_torch import TorchDiffusion, torch_event_shape

        shape = tuple(event_shape) if event_shape is not None else torch_event_shape(score_net)
        return TorchDiffusion(score_net, sde, shape, (), options)
    if not callable(score_net):
        raise ModelError(
            f"score_net={score_net!r} is not callable; pass a torch nn.Module, an equinox/flax module or a "
            "JAX function called as score_net(x, t)."
        )
    from gmppl.models.diffusion_jax import JaxDiffusion, jax_event_shape

    shape = tuple(event_shape) if event_shape is not None else jax_event_shape(score_net)
    return JaxDiffusion(score_net, sde, shape, (), options)


def with_options(d: Any, **changes: Any) -> Any:
    """A copy of a ``Diffusion`` distribution with some ``DiffusionOptions`` changed (e.g. the sampler)."""
    return type(d)(d.score_net, d.sde, tuple(d.event_shape), tuple(d.batch_shape), replace(d.options, **changes))


def find_diffusion(fn: Any) -> Any:
    """The ``Diffusion`` inside a site's distribution (through ``Independent``/``Masked``/expand wrappers)."""
    d = fn
    while d is not None and not getattr(type(d), "gmppl_score_model", False):
        d = getattr(d, "base_dist", None)
    return d


def probe_event_shape(call: Any, max_dim: int = 256) -> tuple[int, ...]:
    """Smallest ``d`` with ``call(d)`` returning a score of shape ``(1, d)``: the vector size the net accepts."""
    for d in range(1, max_dim + 1):
        try:
            out = call(d)
        except Exception:  # noqa: BLE001 - a wrong size raises whatever the network raises
            continue
        if tuple(out) == (1, d):
            return (d,)
    raise ModelError(
        "could not find the data shape the score network takes (tried vectors of size 1.."
        f"{max_dim}); pass Diffusion(score_net, event_shape=(...)) or give the network an event_shape attribute."
    )
