"""``gm.compare``: rank fits of any backends on held-out data.

Where every fit has a likelihood, the score is the held-out expected log predictive density
``elpd = sum_i log p(x_i | fit)`` on ``x_test`` (for Bayesian or ensemble fits
``log (1/S) sum_s p(x_i | theta_s)``), handed to ``az.compare`` as precomputed pointwise values
(held-out data needs no leave-one-out; its ``se`` is ``sqrt(n Var_i[elpd_i])``), so the table has
ArviZ's columns (``rank``, ``elpd``, ``elpd_diff``, ``dse``, ``weight``, ...). Where some fit is implicit,
the table holds two-sample statistics between ``num_samples`` generated examples and ``x_test``:
``MMD^2`` (one Gaussian-kernel bandwidth for all fits, the median heuristic on ``x_test``) and
``W1``, each with its standard error and 95% interval (smaller is better; ranked by MMD).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from gmppl._data import to_numpy
from gmppl.errors import BackendError, NotSupported


def compare(
    fits: dict[str, Any],
    x_test: Any,
    *,
    method: str = "auto",
    num_samples: int | None = None,
    seed: int = 0,
) -> Any:
    """A pandas table ranking ``fits`` (``{name: Fit}``) on ``x_test``; best first.

    ``method``: ``"auto"`` (``"elpd"`` if every fit has a likelihood, else ``"two_sample"``),
    ``"elpd"`` or ``"two_sample"``. ``num_samples`` generated per fit for the two-sample table
    (default ``len(x_test)``, at most 2000).

    Example::

        gm.compare({"flow/likelihood": fit1, "flow/adversarial": fit2}, x_test)
    """
    if not isinstance(fits, dict) or not fits:
        raise BackendError("fits must be a non-empty dict {name: Fit}.")
    if method not in ("auto", "elpd", "two_sample"):
        raise BackendError(f"method={method!r}: use 'auto', 'elpd' or 'two_sample'.")
    x = x_test if isinstance(x_test, Mapping) else np.asarray(to_numpy(x_test))  # a mapping: data and inputs
    if method in ("auto", "elpd"):
        pointwise = {}
        for name, fit in fits.items():
            try:
                pointwise[name] = heldout_log_density(fit, x)
            except NotSupported:
                if method == "elpd":
                    raise
                break
        else:
            return _elpd_table(pointwise)
    if isinstance(x, Mapping):
        raise NotSupported(
            "a two-sample comparison of conditional fits needs samples given each test row; compare them by "
            "method='elpd' (held-out log-likelihood), which takes inputs."
        )
    return _two_sample_table(fits, x, num_samples or min(len(x), 2000), seed)


def heldout_log_density(fit: Any, x: Any) -> np.ndarray:
    """``log p(x_i | fit)``: the mixture over chains and parameter draws, shape ``(len(x),)``."""
    from gmppl.inference.draws import has_draws, log_likelihood_draws

    xs, rows = fit._split(x)
    if has_draws(fit):
        pairs = zip(fit.programs, fit.draws, strict=True)
        ll = np.concatenate([log_likelihood_draws(p, d, xs, rows) for p, d in pairs])
    else:
        ll = fit.log_prob_chains(x)
    ll = np.asarray(ll, dtype=float)
    return np.logaddexp.reduce(ll, axis=0) - np.log(ll.shape[0])


def _elpd_table(pointwise: dict[str, np.ndarray]) -> Any:
    import arviz as az
    import xarray as xr
    from arviz_stats.utils import ELPDDataLOOKFold

    data = {}
    for name, lp in pointwise.items():
        n = len(lp)
        data[name] = ELPDDataLOOKFold(
            elpd=float(lp.sum()),
            se=float(np.sqrt(n * np.var(lp))),
            p=0.0,
            n_samples=1,
            n_data_points=n,
            scale="log",
            warning=False,
            good_k=0.7,
            elpd_i=xr.DataArray(lp, dims=["obs"]),
            n_folds=1,
        )
    return az.compare(data, round_to="none")


def _two_sample_table(fits: dict[str, Any], x: np.ndarray, num_samples: int, seed: int) -> Any:
    import pandas as pd

    from gmppl.divergences import MMD, Wasserstein1

    flat = x.reshape(len(x), -1).astype(float)
    sub = flat[:500]
    d2 = ((sub[:, None] - sub[None]) ** 2).sum(-1)
    bandwidth = float(np.sqrt(np.median(d2[np.triu_indices(len(sub), 1)]))) or 1.0
    mmd, w1 = MMD(bandwidth=bandwidth, seed=seed), Wasserstein1(seed=seed)
    rows = {}
    for name, fit in fits.items():
        y = np.asarray(to_numpy(fit.sample(num_samples, seed=seed)), dtype=float).reshape(num_samples, -1)
        m, w = mmd(y, flat), w1(y, flat)
        rows[name] = {
            "mmd": m.value,
            "mmd_se": m.stderr,
            "mmd_lower": m.interval[0],
            "mmd_upper": m.interval[1],
            "w1": w.value,
            "w1_se": w.stderr,
            "w1_lower": w.interval[0],
            "w1_upper": w.interval[1],
        }
    table = pd.DataFrame.from_dict(rows, orient="index").sort_values("mmd")
    table.insert(0, "rank", np.arange(len(table)))
    table.attrs["bandwidth"] = bandwidth
    return table
