"""What both engines' ``Diffusion`` distributions share: their ``DiffusionOptions`` and the event-shape probe.

``gmppl.models.diffusion`` builds a ``Diffusion`` and picks the engine's class from
``diffusion_torch`` or ``diffusion_jax``; those two import this module, never ``diffusion`` itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from gmppl.errors import ModelError, UnknownName

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


def probe_event_shape(call: Callable[[int], tuple[int, ...]], max_dim: int = 256) -> tuple[int, ...]:
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
