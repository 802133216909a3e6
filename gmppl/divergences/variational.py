r"""The variational (Fenchel) bound maximised numerically over a critic on a finite support.

For ``P``, ``Q`` on outcomes ``k = 1..K`` with probabilities ``p_k``, ``q_k`` the critic is just
``K`` numbers ``T_k = activation(v_k)`` and the objective separates:

    J(v) = sum_k p_k T_k - q_k f*(T_k),      sup_v J(v) = D_f(P || Q),

attained at ``T_k = f'(p_k / q_k)``. The worked example of ``docs/design.md`` ("The Fenchel dual and
the Bernoulli worked example") is ``K = 2`` (Bernoulli) with
``f(u) = u log u``: ``a* = 1 + log((1-p)/(1-q))``, ``b* = 1 + log(p/q)`` and ``J(a*, b*) = KL``.
:func:`optimise_critic` finds the supremum with BFGS in the unconstrained ``v`` (float64,
gradients by a fourth-order central difference), which is what a neural critic does by
gradient ascent, minus the network.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import NotSupported
from ._xp import to_numpy
from .fdivergences import FDivergence

__all__ = ["CriticFit", "optimise_critic"]


@dataclass(frozen=True)
class CriticFit:
    """The maximised bound ``value``, the critic values ``critic = activation(logits)`` per
    outcome and whether the optimiser reported convergence."""

    value: float
    critic: np.ndarray
    logits: np.ndarray
    success: bool


def optimise_critic(divergence: Any, p: Any, q: Any, *, gtol: float = 1e-10) -> CriticFit:
    """``sup_T E_P[T] - E_Q[f*(T)]`` over critics on a finite support, numerically.

    ``p`` and ``q`` are probability vectors over the same outcomes (last axis); ``divergence``
    an :class:`FDivergence` or its name.

    >>> fit = optimise_critic("kl", [0.7, 0.3], [0.4, 0.6])
    >>> round(fit.value, 8), round(float(fit.critic[1]), 6)  # KL, 1 + log(0.3/0.6)
    (0.1837869, 0.306853)
    """
    from scipy import optimize  # slow to import (~0.3 s): only when optimising

    from .registry import get

    d = get(divergence)
    if not isinstance(d, FDivergence):
        raise NotSupported(f"optimise_critic needs an f-divergence, got {type(d).__name__}")
    p, q = to_numpy(p).reshape(-1), to_numpy(q).reshape(-1)
    if p.shape != q.shape:
        raise ValueError(f"p and q need the same outcomes, got shapes {p.shape} and {q.shape}")

    def terms(v: np.ndarray) -> np.ndarray:
        return p * np.asarray(d.activation(v)) - q * np.asarray(d.conjugate_activation(v))

    def neg_j(v: np.ndarray) -> float:
        return -float(np.sum(terms(v)))

    def neg_grad(v: np.ndarray) -> np.ndarray:  # J separates: one derivative per outcome
        h = 1e-3 * np.maximum(1.0, np.abs(v))
        g = (-terms(v + 2 * h) + 8 * terms(v + h) - 8 * terms(v - h) + terms(v - 2 * h)) / (12 * h)
        return -g

    res = optimize.minimize(
        neg_j, np.zeros_like(p), jac=neg_grad, method="BFGS", options={"gtol": gtol, "maxiter": 10_000}
    )
    v = np.asarray(res.x)
    return CriticFit(-float(res.fun), np.asarray(d.activation(v)), v, bool(res.success))
