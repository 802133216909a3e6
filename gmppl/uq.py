"""``gm.uq``: uncertainty of what a fitted model generates — functionals and (rare) event probabilities.

``functional(fit, fn, num_samples)``: the distribution of ``T = fn(x_1..x_m)``, ``x_j ~ p_theta``,
as a DataArray over ``(chain, draw)``. For a Bayesian fit (NUTS) draw ``s`` uses the parameter
draw ``theta_s``, so the spread over draws is the epistemic uncertainty of ``T`` (plus the Monte
Carlo error of ``m`` samples, the aleatoric part, which shrinks as ``m`` grows). For point fits
and ensembles, each draw is a fresh set of ``m`` generated examples from that chain's fit: within a
chain the spread is Monte Carlo error, between chains it is training variability, so
``az.rhat(T)`` near 1 says training is reproducible; ``az.hdi``/``az.mcse`` summarise it.

``probability(fit, event, num_samples)``: ``P(event(x))`` for ``x ~ p_theta`` with ``.value``,
``.stderr``, ``.interval``. Plain Monte Carlo with an exact (Clopper-Pearson) interval when it sees
at least ``min_hits`` hits; otherwise importance sampling ``P(A) = E_q[w 1_A]``, ``w = p/q``:

- in latent space, for programs ``x = g(z)`` (or ``x ~ p(x|z)``) with a latent sample site ``z``
  whose prior has a density: ``p`` is that prior, ``1_A`` is evaluated on ``x`` generated from the
  proposed ``z``. Needs nothing of ``g`` but the ability to run it; exact for implicit models.
- in data space, for models with an exact density and no latent site (flows, fully observed
  models): ``p`` is ``fit.log_prob``.

The proposal is a defensive mixture ``q = a p + (1 - a) N(m, tau^2 Sigma)`` (``a = 0.1``), where
``Sigma`` is the (diagonal) covariance of ``p``, ``tau = 1.25``, and the mean ``m`` is found by the
cross-entropy method: widen ``N(mean_p, s^2 Sigma)`` until it hits the event, then set ``m`` to the
``w``-weighted mean of the hits (twice). The weights are bounded by ``1/a``, so the estimator has
finite variance; the interval is the normal one, ``value +- z * stderr`` (clipped at 0), whose
coverage is checked in ``tests/test_uq.py``. Assumptions: the event region is reached by
shifting the mean (one connected region, or several that one Gaussian covers), and ``p`` has
tails no lighter than Gaussian's; ensembles are estimated chain by chain and averaged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from gmppl._data import to_numpy
from gmppl.errors import BackendError, NotSupported
from gmppl.inference.draws import has_draws, sample_draws


# ---------------------------------------------------------------------- functionals
def functional(
    fit: Any,
    fn: Callable[[np.ndarray], Any],
    num_samples: int = 1000,
    *,
    num_draws: int | None = None,
    seed: int = 0,
    name: str | None = None,
    inputs: Any = None,
) -> Any:
    """``T_{c,s} = fn(x_1..x_m)`` with ``m = num_samples`` examples per ``(chain, draw)``: a DataArray.

    For a conditional model, ``inputs`` (a mapping of arrays) gives the rows to generate at: the ``m``
    examples of a draw are one per row (``num_samples`` is then the number of rows).

    ``num_draws`` (default 100 for point fits; all posterior draws for Bayesian fits) is the
    number of draws per chain. ``fn`` takes a numpy array ``(m, *x_shape)`` and returns a number
    or an array (extra dims ``<name>_dim_k``).

    Example::

        t = gm.uq.functional(fit, lambda x: np.quantile(x[:, 0], 0.99), 2000)
        az.hdi(t), az.mcse(t), az.rhat(t)
    """
    import xarray as xr

    rows = fit._check_inputs(inputs, None) if inputs is not None or fit.input_names else {}
    m = len(next(iter(rows.values()))) if rows else int(num_samples)
    if m < 1:
        raise BackendError(f"num_samples={num_samples!r} must be a positive integer.")
    per_chain = []
    for c, program in enumerate(fit.programs):
        if has_draws(fit):
            xs = sample_draws(program, fit.draws[c], m, seed=seed + c, inputs=rows or None)
            if num_draws is not None:
                xs = xs[np.linspace(0, len(xs) - 1, int(num_draws)).round().astype(int)]
        else:
            d = 100 if num_draws is None else int(num_draws)
            tiled = {k: np.concatenate([v] * d) for k, v in rows.items()} or None
            xs = to_numpy(fit.sample(None if tiled else d * m, seed=seed + 7919 * c, chain=c, inputs=tiled))
            xs = np.asarray(xs).reshape(d, m, *xs.shape[1:])
        per_chain.append(np.stack([np.asarray(fn(x), dtype=float) for x in xs]))
    values = np.stack(per_chain)
    name = name or getattr(fn, "__name__", "functional")
    name = "functional" if name == "<lambda>" else name
    extra = [f"{name}_dim_{i}" for i in range(values.ndim - 2)]
    return xr.DataArray(
        values,
        dims=["chain", "draw", *extra],
        coords={"chain": np.arange(values.shape[0]), "draw": np.arange(values.shape[1])},
        name=name,
        attrs={"num_samples": m},
    )


# ---------------------------------------------------------------------- probabilities
@dataclass(frozen=True)
class ProbabilityEstimate:
    """An estimate of ``P(A)``: ``value``, ``stderr``, ``interval`` (at ``prob``), and how it was made."""

    value: float
    stderr: float
    interval: tuple[float, float]
    prob: float
    method: str  # "monte_carlo" | "importance_latent" | "importance_density"
    num_samples: int
    hits: int
    ess: float

    def __float__(self) -> float:
        return float(self.value)

    def __repr__(self) -> str:
        lo, hi = self.interval
        return (
            f"P = {self.value:.4g} ± {self.stderr:.2g} ({self.prob:.0%} interval [{lo:.3g}, {hi:.3g}]; "
            f"{self.method}, {self.num_samples} samples, {self.hits} hits)"
        )


def probability(
    fit: Any,
    event: Callable[[np.ndarray], Any],
    num_samples: int = 20000,
    *,
    seed: int = 0,
    prob: float = 0.95,
    min_hits: int = 50,
    method: str = "auto",
) -> ProbabilityEstimate:
    """``P(event(x))``, ``x ~ p_theta``; ``event`` maps samples ``(n, *x_shape)`` to ``n`` booleans.

    ``method``: ``"auto"`` (Monte Carlo, then importance sampling when it sees fewer than
    ``min_hits`` hits), ``"monte_carlo"``, ``"latent"`` or ``"density"`` (see the module docstring).

    Example::

        p = gm.uq.probability(fit, lambda x: x[:, 0] > 4.0)
        p.value, p.stderr, p.interval
    """
    from scipy import stats

    if method not in ("auto", "monte_carlo", "latent", "density"):
        raise BackendError(f"method={method!r}: use 'auto', 'monte_carlo', 'latent' or 'density'.")
    n = int(num_samples)
    z = float(stats.norm.ppf(0.5 + prob / 2))
    if method in ("auto", "monte_carlo"):
        x = np.asarray(to_numpy(fit.sample(n, seed=seed)))
        k = int(_indicator(event, x).sum())
        if method == "monte_carlo" or k >= min_hits:
            return _monte_carlo(k, n, prob)
    space = method if method != "auto" else _choose_space(fit)
    if space is None:
        return _monte_carlo(k, n, prob)  # no density and no latent: the exact binomial interval
    if space == "latent":
        parts = [
            _importance(_LatentSpace(fit, p, event), n // fit.chains, seed + c) for c, p in enumerate(fit.programs)
        ]
        value = float(np.mean([p[0] for p in parts]))
        stderr = float(np.sqrt(sum(p[1] ** 2 for p in parts)) / len(parts))
        hits, ess = sum(p[2] for p in parts), float(sum(p[3] for p in parts))
    else:
        value, stderr, hits, ess = _importance(_DensitySpace(fit, event), n, seed)
    return ProbabilityEstimate(
        value=value,
        stderr=stderr,
        interval=(max(0.0, value - z * stderr), min(1.0, value + z * stderr)),
        prob=prob,
        method=f"importance_{space}",
        num_samples=n,
        hits=hits,
        ess=ess,
    )


def _indicator(event: Callable, x: np.ndarray) -> np.ndarray:
    hit = np.asarray(to_numpy(event(x))).astype(bool).reshape(-1)
    if hit.shape[0] != len(x):
        raise BackendError(f"event(x) returned {hit.shape[0]} values for {len(x)} samples; return one boolean each.")
    return hit


def _monte_carlo(k: int, n: int, prob: float) -> ProbabilityEstimate:
    """``k/n`` with the Clopper-Pearson interval (exact: coverage at least ``prob``)."""
    from scipy import stats

    a = 1 - prob
    lo = 0.0 if k == 0 else float(stats.beta.ppf(a / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(stats.beta.ppf(1 - a / 2, k + 1, n - k))
    p = k / n
    return ProbabilityEstimate(p, float(np.sqrt(p * (1 - p) / n)), (lo, hi), prob, "monte_carlo", n, k, float(n))


def _choose_space(fit: Any) -> str | None:
    if has_draws(fit):
        return "density" if _has_density(fit) else None
    info = fit.info
    if info.latent is not None and info.latent in info.latents and info.z_event_shape is not None:
        return "latent"
    return "density" if _has_density(fit) else None


def _has_density(fit: Any) -> bool:
    try:
        lp = fit.log_prob(to_numpy(fit.sample(2, seed=0)))
        lp = to_numpy(getattr(lp, "value", lp))
    except (NotSupported, NotImplementedError):
        return False
    return bool(np.all(np.isfinite(np.asarray(lp, dtype=float))))


class _DensitySpace:
    """Data space: ``p`` is the fitted model itself (``fit.sample``, ``fit.log_prob``)."""

    def __init__(self, fit: Any, event: Callable):
        self.fit, self.event = fit, event
        self.shape = tuple(fit.info.x_event_shape)

    def draw_p(self, n: int, seed: int) -> np.ndarray:
        return np.asarray(to_numpy(self.fit.sample(n, seed=seed)), dtype=float).reshape(n, -1)

    def log_p(self, u: np.ndarray, chunk: int = 4096) -> np.ndarray:
        """``fit.log_prob`` in fixed-size (padded) chunks, so a jitted density compiles once."""
        x = u.reshape(len(u), *self.shape).astype(self.fit.data.dtype)
        out = []
        for i in range(0, len(x), chunk):
            part = x[i : i + chunk]
            padded = np.concatenate([part, np.repeat(part[:1], chunk - len(part), 0)])
            lp = self.fit.log_prob(padded)
            out.append(np.asarray(to_numpy(getattr(lp, "value", lp)), dtype=float)[: len(part)])
        return np.concatenate(out)

    def hits(self, u: np.ndarray, seed: int) -> np.ndarray:
        return _indicator(self.event, u.reshape(len(u), *self.shape).astype(self.fit.data.dtype))


class _LatentSpace:
    """Latent space of one chain: ``p`` is the prior of the latent site; ``x`` is generated from ``z``."""

    def __init__(self, fit: Any, program: Any, event: Callable):
        self.fit, self.program, self.event = fit, program, event
        self.latent = fit.info.latent
        self.shape = tuple(fit.info.z_event_shape)

    def _run(self, z: np.ndarray | None, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(z, log prior(z), x) from one run of the program generating ``n`` examples, ``z`` given or drawn."""
        given = None if z is None else {self.latent: z.reshape(n, *self.shape).astype(np.float32)}
        sites = self.program.run(n, seed=seed, given=given)
        lp, x, zv = sites[self.latent]["log_prob"], sites[self.program.observed]["value"], sites[self.latent]["value"]
        lp = lp.reshape(n, -1).sum(-1).astype(float)
        return zv.reshape(n, -1).astype(float), lp, x

    def draw_p(self, n: int, seed: int) -> np.ndarray:
        return self._run(None, n, seed)[0]

    def log_p(self, u: np.ndarray) -> np.ndarray:
        return self._run(u, len(u), 0)[1]

    def hits(self, u: np.ndarray, seed: int) -> np.ndarray:
        return _indicator(self.event, self._run(u, len(u), seed)[2])


_DEFENSIVE, _TAU = 0.1, 1.25


def _gauss_logpdf(u: np.ndarray, m: np.ndarray, sd: np.ndarray) -> np.ndarray:
    return (-0.5 * ((u - m) / sd) ** 2 - np.log(sd) - 0.5 * np.log(2 * np.pi)).sum(-1)


def _importance(space: Any, n: int, seed: int) -> tuple[float, float, int, float]:
    """Cross-entropy search for a shifted Gaussian, then defensive-mixture IS: (value, stderr, hits, ESS)."""
    rng = np.random.default_rng(seed)
    n_ce = max(1000, n // 10)
    base = space.draw_p(n_ce, seed + 1)
    mean, sd = base.mean(0), base.std(0) + 1e-12
    m, width = mean, 1.0
    for it in range(12):  # widen until the proposal sees the event, then move the mean (CE)
        u = m + width * sd * rng.standard_normal((n_ce, len(m)))
        hit = space.hits(u, seed + 10 + it)
        if hit.sum() >= 10:
            logw = space.log_p(u)[hit] - _gauss_logpdf(u[hit], m, width * sd)
            w = np.exp(logw - logw.max())
            m = (w[:, None] * u[hit]).sum(0) / w.sum()
            if width == _TAU and it >= 2:
                break
            width = _TAU
        else:
            width *= 1.5
    n_p = int(round(n * _DEFENSIVE))  # fixed counts: the mixture weights stay unbiased (balance heuristic)
    u = np.concatenate([space.draw_p(n_p, seed + 100), m + _TAU * sd * rng.standard_normal((n - n_p, len(m)))])
    hit = space.hits(u, seed + 101)
    lp = space.log_p(u)
    lq = np.logaddexp(np.log(_DEFENSIVE) + lp, np.log1p(-_DEFENSIVE) + _gauss_logpdf(u, m, _TAU * sd))
    f = np.where(hit, np.exp(lp - lq), 0.0)
    value = float(f.mean())
    stderr = float(f.std(ddof=1) / np.sqrt(n))
    ess = float(f.sum() ** 2 / max((f**2).sum(), 1e-300))
    return value, stderr, int(hit.sum()), ess
