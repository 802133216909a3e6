r"""Averaged iterates, shared by the backends that return them (``Adversarial``'s generator, ``Score``'s network).

``theta_bar_t = d_t theta_bar_{t-1} + (1 - d_t) theta_t`` with ``d_t = min(ema, (1 + t) / (10 + t))``: the
warm-up keeps the first iterates from dominating the average; training runs on the iterates ``theta_t``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


def decay(ema: float, t: Any) -> Any:
    """``d_t = min(ema, (1 + t) / (10 + t))`` at step ``t = 1, 2, ...`` (a Python int on torch, a traced JAX value)."""
    if isinstance(t, int):
        return min(float(ema), (1.0 + t) / (10.0 + t))
    import jax.numpy as jnp

    return jnp.minimum(ema, (1.0 + t) / (10.0 + t))


def torch_update(average: list, params: list, d: float) -> None:
    """``average <- d average + (1 - d) params`` in place (one foreach kernel)."""
    import torch

    with torch.no_grad():
        torch._foreach_lerp_(average, params, 1.0 - d)


def jax_update(average: Any, params: Any, d: Any) -> Any:
    """``d average + (1 - d) params`` leaf by leaf, in each parameter's dtype (pure: the new average)."""
    import jax

    return jax.tree.map(lambda e, p: (d * e + (1 - d) * p).astype(p.dtype), average, params)


@contextlib.contextmanager
def torch_swapped_in(params: list, average: list) -> Iterator[None]:
    """The average in ``params`` for the duration (validation mid-training), then the iterate again."""
    import torch

    with torch.no_grad():
        current = [p.detach().clone() for p in params]
        torch._foreach_copy_(params, average)
    try:
        yield
    finally:
        with torch.no_grad():
            torch._foreach_copy_(params, current)


def torch_write(params: list, average: list) -> None:
    """Write the average into ``params`` (the fitted values)."""
    import torch

    with torch.no_grad():
        torch._foreach_copy_(params, average)
