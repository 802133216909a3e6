"""``Estimate``: a number from samples, with its standard error and a 95% interval."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Estimate"]

_Z95 = 1.959963984540054  # standard normal 97.5% quantile


@dataclass(frozen=True)
class Estimate:
    """A sample-based estimate: ``value``, its ``stderr``, a 95% ``interval`` and, for a
    two-sample test, the permutation ``pvalue``. ``float(est)`` is ``est.value``.

    >>> e = Estimate.of_mean([1.0, 2.0, 3.0])
    >>> float(e), round(e.stderr, 4)
    (2.0, 0.5774)
    """

    value: float
    stderr: float
    interval: tuple[float, float]
    pvalue: float | None = None
    method: str = ""

    @classmethod
    def normal(cls, value: float, stderr: float, *, pvalue: float | None = None, method: str = "") -> Estimate:
        """``value +- 1.96 stderr`` (a normal-approximation interval)."""
        value, stderr = float(value), float(stderr)
        return cls(value, stderr, (value - _Z95 * stderr, value + _Z95 * stderr), pvalue, method)

    @classmethod
    def of_mean(cls, samples: Any, *, method: str = "monte carlo") -> Estimate:
        """The mean of i.i.d. ``samples`` with stderr ``std / sqrt(n)``."""
        from ._xp import to_numpy

        x = to_numpy(samples).reshape(-1)
        n = x.size
        se = float(np.std(x, ddof=1) / math.sqrt(n)) if n > 1 else math.nan
        return cls.normal(float(np.mean(x)), se, method=method)

    def __float__(self) -> float:
        return self.value

    def __format__(self, spec: str) -> str:
        if not spec:
            return repr(self)
        return f"{format(self.value, spec)} ± {format(self.stderr, spec)}"

    def __repr__(self) -> str:
        lo, hi = self.interval
        s = f"Estimate({self.value:.6g} ± {self.stderr:.2g}, 95% [{lo:.6g}, {hi:.6g}]"
        if self.pvalue is not None:
            s += f", p={self.pvalue:.3g}"
        if self.method:
            s += f", {self.method}"
        return s + ")"
