"""Step-size control for the batched likelihood ODEs of ``ContinuousFlow`` and ``Diffusion``.

An adaptive solver accepts a step when ``||err / (atol + rtol |y|)|| <= 1``. The solvers' default norm is
the root mean square over the whole state, so with a batch of ``n`` examples one example's error can reach
about ``sqrt(n)`` times the tolerance while the batch passes: its log-likelihood then depends on what else
was in the batch. :func:`per_example_rms` takes each example's root mean square over its own components
(its ``x`` and its log-determinant) and the largest over the batch, so every example is solved to the
tolerance, whatever the batch.
"""

from __future__ import annotations

from typing import Any


def per_example_rms(state: tuple[Any, Any]) -> Any:
    """``max_i sqrt((|e_x,i|^2 + e_l,i^2) / (D + 1))`` for a scaled error ``(e_x (n, ...), e_l (n,))`` (torch or JAX)."""
    x, logdet = state
    n = logdet.shape[0]
    flat = x.reshape(n, -1)
    return (((flat**2).sum(1) + logdet**2) / (flat.shape[1] + 1)).max() ** 0.5
