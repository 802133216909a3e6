r"""Two-sample statistics: ``stat(x, y) -> Estimate`` on two sample arrays (examples on axis 0).

* :class:`Wasserstein1` — ``W1(P, Q) = inf_pi E_pi |x - y|`` between the empirical
  distributions: exact optimal transport (POT's network simplex ``ot.emd2``, Euclidean cost;
  in 1-D the sorted-samples formula) or sliced (``E_theta W1(theta#P, theta#Q)`` over random
  directions, cheap in high dimension). Stderr by a bootstrap over ``num_bootstrap`` resamples.
* :class:`MMD` — the unbiased U-statistic of ``MMD^2 = E k(x,x') + E k(y,y') - 2 E k(x,y)``
  with a Gaussian kernel, bandwidth by the median heuristic; stderr by the delete-one
  jackknife; ``permutation_test`` gives the p-value of ``P = Q``.
* :class:`EnergyDistance` — ``2 E|x - y| - E|x - x'| - E|y - y'|`` (Székely & Rizzo), the same
  U-statistic with the kernel ``-|x - y|``.

Arrays of any engine are accepted; the estimates are computed in float64 numpy. ``MMD`` and
``EnergyDistance`` also offer ``statistic(x, y)``: the U-statistic in the arrays' own namespace,
differentiable (torch, JAX) for use as a training loss.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from types import ModuleType
from typing import Any, ClassVar, Literal, final

import array_api_compat as aac
import numpy as np

from ..errors import DataError
from ._xp import Array, as_floats, stop_gradient, to_numpy
from .estimate import Estimate

__all__ = ["MMD", "EnergyDistance", "Wasserstein1"]


def _as_samples(x: Any, label: str, min_n: int) -> np.ndarray:
    a = to_numpy(x)
    if a.ndim == 0:
        raise DataError(f"{label} must be an array of samples with examples on axis 0, got a scalar")
    a = a.reshape(a.shape[0], -1)
    if a.shape[0] < min_n:
        raise DataError(f"{label} has {a.shape[0]} examples; need at least {min_n}")
    if not np.all(np.isfinite(a)):
        raise DataError(f"{label} contains NaN or inf; remove or impute those examples")
    return a


def _pair(x: Any, y: Any, min_n: int = 1) -> tuple[np.ndarray, np.ndarray]:
    a, b = _as_samples(x, "x", min_n), _as_samples(y, "y", min_n)
    if a.shape[1] != b.shape[1]:
        raise DataError(f"x and y must have the same features per example, got {a.shape[1]} and {b.shape[1]}")
    return a, b


# ------------------------------------------------------------------ Wasserstein-1
@final
@dataclass(frozen=True)
class Wasserstein1:
    """Wasserstein-1 distance between the empirical distributions of ``x`` and ``y``.

    ``method="exact"``: optimal transport with Euclidean cost (``ot.emd2``; ``O(n^2)`` memory),
    exact on the samples; in 1-D ``ot.wasserstein_1d``, i.e. ``mean |x_(i) - y_(i)|`` for equal
    sizes. ``method="sliced"``: the mean 1-D W1 over ``num_projections`` random directions (a
    different, smaller distance; equal to W1 in 1-D). The plug-in value is biased upwards for
    finite samples; ``stderr`` is the standard deviation over ``num_bootstrap`` bootstrap
    resamples of both samples (0 disables it: stderr NaN), a cheap measure of its spread.

    For a critic ``T`` (1-Lipschitz), the Kantorovich–Rubinstein dual
    ``W1 = sup_T E_P[T] - E_Q[T]`` is :meth:`variational_bound`.

    >>> import numpy as np
    >>> float(Wasserstein1(num_bootstrap=0)(np.array([0.0, 1.0]), np.array([2.0, 3.0])))
    2.0
    """

    method: Literal["exact", "sliced"] = "exact"
    num_projections: int = 128
    num_bootstrap: int = 10
    seed: int = 0
    name: ClassVar[str] = "w1"

    def __post_init__(self) -> None:
        if self.method not in ("exact", "sliced"):
            raise ValueError(f"method must be 'exact' or 'sliced', got {self.method!r}")

    def _value(self, x: np.ndarray, y: np.ndarray, seed: int) -> float:
        import ot

        if x.shape[1] == 1:
            return float(ot.wasserstein_1d(x[:, 0], y[:, 0], p=1))
        if self.method == "sliced":
            return float(ot.sliced_wasserstein_distance(x, y, n_projections=self.num_projections, p=1, seed=seed))
        a = np.full(x.shape[0], 1.0 / x.shape[0])
        b = np.full(y.shape[0], 1.0 / y.shape[0])
        return float(ot.emd2(a, b, ot.dist(x, y, metric="euclidean"), numItermax=10_000_000))

    def distance(self, x: Any, y: Any) -> float:
        """The point value only (no bootstrap)."""
        a, b = _pair(x, y)
        return self._value(a, b, self.seed)

    def __call__(self, x: Any, y: Any) -> Estimate:
        """``W1`` between the samples, with a bootstrap standard error."""
        a, b = _pair(x, y)
        value = self._value(a, b, self.seed)
        rng = np.random.default_rng(self.seed)
        boots = [
            self._value(a[rng.integers(0, len(a), len(a))], b[rng.integers(0, len(b), len(b))], self.seed + k + 1)
            for k in range(self.num_bootstrap)
        ]
        se = float(np.std(boots, ddof=1)) if len(boots) > 1 else math.nan
        return Estimate.normal(value, se, method=f"{self.method} OT, bootstrap stderr (B={self.num_bootstrap})")

    # -- the dual, for a Lipschitz critic (adversarial backend)
    def activation(self, v: Any) -> Array:
        """The critic output is used as is (its Lipschitz constant is controlled elsewhere)."""
        _, (v,) = as_floats(v)
        return v

    def variational_bound(self, t_p: Any, t_q: Any) -> Array:
        """``mean(T(x_P)) - mean(T(y_Q))``: a lower bound on ``W1`` for 1-Lipschitz ``T``."""
        xp, (t_p, t_q) = as_floats(t_p, t_q)
        return xp.mean(t_p) - xp.mean(t_q)

    def variational_bound_from_logits(self, v_p: Any, v_q: Any) -> Array:
        """Same as :meth:`variational_bound` (the activation is the identity)."""
        return self.variational_bound(v_p, v_q)


# ------------------------------------------------------------------ kernel U-statistics
def _sq_dists(xp: ModuleType, a: Array, b: Array) -> Array:
    d2 = xp.sum(a * a, axis=1)[:, None] + xp.sum(b * b, axis=1)[None, :] - 2.0 * (a @ b.T)
    return xp.maximum(d2, xp.zeros_like(d2))


class _KernelTwoSample(ABC):
    """``U = sum_{i!=i'} k(x_i, x_i')/(m(m-1)) + sum_{j!=j'} k(y_j, y_j')/(n(n-1))
    - 2 sum_{i,j} k(x_i, y_j)/(mn)``, an unbiased estimate of ``E k(x,x') + E k(y,y') - 2 E k(x,y)``.
    """

    num_permutations: int
    seed: int

    @abstractmethod
    def _scale(self, xp: ModuleType, x: Array, y: Array) -> Array:
        """Kernel scale from both samples (gradient-free, symmetric in the pooled sample)."""

    @abstractmethod
    def _kernel(self, xp: ModuleType, d2: Array, scale: Array) -> Array:
        """Kernel values from squared distances."""

    def _matrices(self, xp: ModuleType, x: Array, y: Array) -> tuple[Array, Array, Array]:
        scale = self._scale(xp, x, y)
        return (
            self._kernel(xp, _sq_dists(xp, x, x), scale),
            self._kernel(xp, _sq_dists(xp, y, y), scale),
            self._kernel(xp, _sq_dists(xp, x, y), scale),
        )

    def statistic(self, x: Any, y: Any) -> Array:
        """The U-statistic in the arrays' own namespace (differentiable; jittable in JAX)."""
        xp, (x, y) = as_floats(x, y)
        x, y = xp.reshape(x, (x.shape[0], -1)), xp.reshape(y, (y.shape[0], -1))
        m, n = x.shape[0], y.shape[0]
        kxx, kyy, kxy = self._matrices(xp, x, y)
        off_x = xp.eye(m, dtype=x.dtype, device=aac.device(x)) == 0
        off_y = xp.eye(n, dtype=y.dtype, device=aac.device(y)) == 0
        sxx = xp.sum(xp.where(off_x, kxx, xp.zeros_like(kxx)))
        syy = xp.sum(xp.where(off_y, kyy, xp.zeros_like(kyy)))
        return sxx / (m * (m - 1)) + syy / (n * (n - 1)) - 2.0 * xp.sum(kxy) / (m * n)

    def __call__(self, x: Any, y: Any) -> Estimate:
        """The U-statistic with a jackknife stderr (and a permutation p-value if
        ``num_permutations > 0``)."""
        a, b = _pair(x, y, min_n=3)
        xp = aac.array_namespace(a)
        kxx, kyy, kxy = (np.asarray(k) for k in self._matrices(xp, a, b))
        m, n = len(a), len(b)
        np.fill_diagonal(kxx, 0.0)
        np.fill_diagonal(kyy, 0.0)
        sxx, syy, sxy = kxx.sum(), kyy.sum(), kxy.sum()
        value = sxx / (m * (m - 1)) + syy / (n * (n - 1)) - 2.0 * sxy / (m * n)
        # delete-one jackknife over both samples
        loo_x = (sxx - 2.0 * kxx.sum(1)) / ((m - 1) * (m - 2)) + syy / (n * (n - 1))
        loo_x -= 2.0 * (sxy - kxy.sum(1)) / ((m - 1) * n)
        loo_y = (syy - 2.0 * kyy.sum(1)) / ((n - 1) * (n - 2)) + sxx / (m * (m - 1))
        loo_y -= 2.0 * (sxy - kxy.sum(0)) / (m * (n - 1))
        var = (m - 1) / m * np.sum((loo_x - loo_x.mean()) ** 2) + (n - 1) / n * np.sum((loo_y - loo_y.mean()) ** 2)
        pvalue = self.permutation_test(a, b, self.num_permutations, self.seed) if self.num_permutations else None
        return Estimate.normal(value, math.sqrt(var), pvalue=pvalue, method="U-statistic, jackknife stderr")

    def permutation_test(self, x: Any, y: Any, num_permutations: int = 200, seed: int | None = None) -> float:
        """p-value of ``P = Q``: the share of label permutations whose statistic is at least the
        observed one, ``(1 + #{U_perm >= U}) / (1 + num_permutations)`` (exact level)."""
        a, b = _pair(x, y, min_n=2)
        m, n = len(a), len(b)
        z = np.concatenate([a, b])
        xp = aac.array_namespace(z)
        k = np.array(self._kernel(xp, _sq_dists(xp, z, z), self._scale(xp, a, b)))
        np.fill_diagonal(k, 0.0)
        rows = k.sum(1)
        rng = np.random.default_rng(self.seed if seed is None else seed)

        def stats(labels: np.ndarray) -> np.ndarray:  # labels: (N, B) indicators of "x"
            ka = k @ labels
            sxx = np.sum(labels * ka, 0)
            sxy = np.sum(labels * (rows[:, None] - ka), 0)
            syy = rows.sum() - 2.0 * sxy - sxx
            return sxx / (m * (m - 1)) + syy / (n * (n - 1)) - 2.0 * sxy / (m * n)

        observed = stats(np.concatenate([np.ones(m), np.zeros(n)])[:, None])[0]
        exceed, done = 0, 0
        while done < num_permutations:
            chunk = min(128, num_permutations - done)
            labels = np.zeros((m + n, chunk))
            for c in range(chunk):
                labels[rng.permutation(m + n)[:m], c] = 1.0
            exceed += int(np.sum(stats(labels) >= observed - 1e-12 * abs(observed)))
            done += chunk
        return (1.0 + exceed) / (1.0 + num_permutations)


@final
@dataclass(frozen=True)
class MMD(_KernelTwoSample):
    """Squared maximum mean discrepancy with ``k(x, y) = exp(-|x - y|^2 / (2 s^2))``.

    ``bandwidth`` ``s``: a float, or None for the median heuristic (the median pairwise
    distance of the pooled sample, on at most 500 examples of each; held fixed under
    permutations, so the test keeps its level). The value is the unbiased U-statistic of
    ``MMD^2``: it can be slightly negative when ``P = Q``.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> e = MMD()(rng.normal(size=(200, 2)), rng.normal(size=(200, 2)) + 1.0)
    >>> e.value > 4 * e.stderr
    True
    """

    bandwidth: float | None = None
    num_permutations: int = 0
    seed: int = 0
    name: ClassVar[str] = "mmd"

    def _scale(self, xp, x, y):
        if self.bandwidth is not None:
            return xp.asarray(float(self.bandwidth) ** 2, dtype=x.dtype, device=aac.device(x))
        z = stop_gradient(xp.concat([x[:500, ...], y[:500, ...]], axis=0))
        d2 = _sq_dists(xp, z, z)
        N = d2.shape[0]
        # the N zeros of the diagonal sort first; the median of the N(N-1) others follows
        flat = xp.sort(xp.reshape(d2 - xp.eye(N, dtype=d2.dtype, device=aac.device(d2)), (-1,)))
        half = N + N * (N - 1) // 2
        med = 0.5 * (flat[half - 1] + flat[half])
        return xp.where(med > 0, med, xp.ones_like(med))

    def _kernel(self, xp, d2, scale):
        return xp.exp(-0.5 * d2 / scale)


@final
@dataclass(frozen=True)
class EnergyDistance(_KernelTwoSample):
    """Energy distance ``2 E|x - y| - E|x - x'| - E|y - y'|`` (the U-statistic; zero iff P = Q).

    >>> import numpy as np
    >>> round(float(EnergyDistance()(np.zeros((5, 1)), np.ones((5, 1)))), 6)  # 2*1 - 0 - 0
    2.0
    """

    num_permutations: int = 0
    seed: int = 0
    name: ClassVar[str] = "energy"

    def _scale(self, xp, x, y):
        return xp.ones_like(x[0, 0])

    def _kernel(self, xp, d2, scale):
        pos = d2 > 0
        return -xp.where(pos, xp.sqrt(xp.where(pos, d2, xp.ones_like(d2))), xp.zeros_like(d2))
