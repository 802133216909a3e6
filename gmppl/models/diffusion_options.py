"""What both engines' ``Diffusion`` distributions share: their ``DiffusionOptions``, the event-shape probe and
the conditioning arithmetic (context rows, the null context, classifier-free guidance), written once against
the array API.

``gmppl.models.diffusion`` builds a ``Diffusion`` and picks the engine's class from
``diffusion_torch`` or ``diffusion_jax``; those two import this module, never ``diffusion`` itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

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
    guidance: float = 0.0

    def __post_init__(self) -> None:
        if not math.isfinite(self.guidance):
            raise ModelError(f"guidance={self.guidance!r} must be a finite number (0: no guidance).")
        if self.sampler not in SAMPLERS:
            raise UnknownName(f"sampler={self.sampler!r} is unknown; use one of {SAMPLERS}.")
        if self.trace not in TRACES:
            raise UnknownName(f"trace={self.trace!r} is unknown; use one of {TRACES}.")
        if self.steps < 1 or self.probes < 1:
            raise ModelError(f"steps={self.steps} and probes={self.probes} must be positive.")

    def use_exact_trace(self, dim: int, trace: str | None = None) -> bool:
        trace = trace or self.trace
        return trace == "exact" or (trace == "auto" and dim <= self.exact_trace_max_dim)


def context_rows(xp: ModuleType, c: Any, n: int) -> Any:
    """The context for a batch of ``n`` examples: ``c`` (``R`` rows) tiled ``n / R`` times, so example ``i``
    gets row ``i mod R`` (a batch shaped ``(k, R, ...)`` flattened row-major pairs each ``x`` with its row)."""
    r = c.shape[0]
    if n == r:
        return c
    if r == 0 or n % r:
        raise ModelError(
            f"a Diffusion with a context of {r} rows was asked for {n} examples; give one context row per example "
            "(or a multiple of the rows: sample_shape=(k,) repeats them k times)."
        )
    return xp.tile(c, (n // r,) + (1,) * (c.ndim - 1))


def null_context(xp: ModuleType, c: Any, null: Any = None) -> Any:
    """The null context shaped like ``c``: zeros, or ``null`` (one row, or all rows) broadcast to ``c``'s shape."""
    if null is None:
        return xp.zeros_like(c)
    return xp.broadcast_to(xp.astype(null, c.dtype) if hasattr(null, "dtype") else null, c.shape)


def drop_context(xp: ModuleType, c: Any, null: Any, drop: Any) -> Any:
    """Classifier-free guidance training: row ``i`` of ``c`` replaced by the null context where ``drop[i]``."""
    return xp.where(xp.reshape(drop, (-1,) + (1,) * (c.ndim - 1)), null, c)


def guided_score(s_cond: Any, s_null: Any, w: float) -> Any:
    """The classifier-free-guided score ``(1 + w) s(x, t, c) - w s(x, t, null)`` (Ho & Salimans 2022)."""
    return (1.0 + w) * s_cond - w * s_null


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
