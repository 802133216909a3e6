"""Divergences between distributions: the f-divergence family, Wasserstein-1, MMD, energy.

Every generative model in gmppl minimises some ``D(P_X || P_theta)``; this subpackage holds the
``D``s, written once against the array API so they run on numpy, torch and JAX alike:

* the f-divergences ``D_f(P || Q) = E_Q[f(p/q)]`` — :class:`KL`, :class:`ReverseKL`,
  :class:`Pearson`, :class:`Neyman`, :class:`SquaredHellinger`, :class:`Jeffreys`,
  :class:`JensenShannon`, :class:`GAN`, :class:`TotalVariation` — each with ``f``, ``f_prime``,
  ``conjugate``, ``activation``, ``conjugate_activation``, the variational bound from critic
  values, ``optimal_critic``, ``closed_form``, ``quadrature`` and ``monte_carlo``;
* two-sample statistics called as ``stat(x, y)`` returning an :class:`Estimate` —
  :class:`Wasserstein1`, :class:`MMD`, :class:`EnergyDistance`;
* :func:`get` — a divergence by name (``"kl"``, ``"js"``, ``"w1"``, ...).

>>> import gmppl.divergences as gd
>>> import numpy as np
>>> d = gd.get("js")
>>> bool(d.f(np.array(1.0)) == 0.0)
True
"""

from ._xp import lambertw
from .estimate import Estimate
from .fdivergences import (
    FAMILY,
    GAN,
    KL,
    Domain,
    FDivergence,
    Jeffreys,
    JensenShannon,
    Neyman,
    Pearson,
    ReverseKL,
    SquaredHellinger,
    TotalVariation,
)
from .quadrature import quadrature
from .registry import available, get
from .samples import MMD, EnergyDistance, Wasserstein1
from .variational import CriticFit, optimise_critic

__all__ = [
    "FAMILY",
    "GAN",
    "KL",
    "MMD",
    "CriticFit",
    "Domain",
    "EnergyDistance",
    "Estimate",
    "FDivergence",
    "Jeffreys",
    "JensenShannon",
    "Neyman",
    "Pearson",
    "ReverseKL",
    "SquaredHellinger",
    "TotalVariation",
    "Wasserstein1",
    "available",
    "get",
    "lambertw",
    "optimise_critic",
    "quadrature",
]
