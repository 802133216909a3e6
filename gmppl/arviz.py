"""One converter from a `Fit` (either engine, any backend) to an ArviZ ``DataTree``.

Groups (absent when they do not apply, never empty):
- ``posterior``: latent draws ``z | x`` (``chain, draw, obs, z_dim``) where the backend gives them.
- ``posterior_predictive``: generated ``x`` (``chain, draw, x_dim...``).
- ``log_likelihood``: pointwise ``log p(x_i)`` (``chain, draw, obs``) where a likelihood exists.
- ``sample_stats``: the training history, one ``draw`` per step.
- ``observed_data``: the data given (``x``, else the training data).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gmppl._data import to_numpy
from gmppl.errors import NotSupported


def _x_dims(shape: tuple[int, ...]) -> list[str]:
    return [f"x_dim_{i}" for i in range(len(shape))] if len(shape) != 1 else ["x_dim"]


def _z_dims(shape: tuple[int, ...]) -> list[str]:
    return [f"z_dim_{i}" for i in range(len(shape))] if len(shape) != 1 else ["z_dim"]


def to_datatree(
    fit: Any,
    x: Any = None,
    *,
    num_samples: int = 200,
    seed: int = 0,
    posterior_samples: int = 20,
    log_likelihood: bool = True,
) -> Any:
    """Build the ``DataTree`` of a fit; see the module docstring for the groups."""
    from arviz_base import from_dict

    x_dims = _x_dims(fit.info.x_event_shape)
    data: dict[str, dict[str, np.ndarray]] = {}
    dims: dict[str, list[str]] = {"x": x_dims}

    draws = [to_numpy(fit.sample(num_samples, seed=seed + c, chain=c)) for c in range(fit.chains)]
    data["posterior_predictive"] = {"x": np.stack(draws)}

    xs = fit.data if x is None else fit._check_x(x)
    if x is not None:
        if log_likelihood:
            try:
                ll = fit.log_prob_chains(xs)
            except NotSupported:
                ll = None
            if ll is not None:
                data["log_likelihood"] = {"x": ll[:, None, :]}
                dims["log_likelihood_x"] = ["obs"]
        try:
            zs = np.stack(
                [to_numpy(fit.posterior(xs, posterior_samples, seed=seed, chain=c)) for c in range(fit.chains)]
            )
        except NotSupported:
            zs = None
        if zs is not None:
            data["posterior"] = {fit.info.latent or "z": zs}
            dims[fit.info.latent or "z"] = ["obs", *_z_dims(zs.shape[3:])]

    hist = fit._histories
    data["sample_stats"] = {k: np.stack([np.asarray(h[k], dtype=float) for h in hist]) for k in hist[0]}
    if xs is not None:
        data["observed_data"] = {"x": np.asarray(xs)}
        dims["observed_x"] = ["obs", *x_dims]

    tree = from_dict(
        {g: v for g, v in data.items()},
        dims={k: v for k, v in dims.items() if not k.startswith(("log_likelihood_", "observed_"))},
        attrs={"/": {"backend": type(fit.backend).__name__, "engine": fit.engine, "inference_library": "gmppl"}},
    )
    return _fix_dims(tree, data, dims)


def _fix_dims(tree: Any, data: dict, dims: dict) -> Any:
    """Name the observation dims of ``log_likelihood`` and ``observed_data`` (``obs``)."""
    import xarray as xr

    if "log_likelihood" in data:
        ds = tree["log_likelihood"].to_dataset()
        other = [d for d in ds["x"].dims if d not in ("chain", "draw")]
        ds = ds.rename({other[0]: "obs"})
        tree["log_likelihood"] = xr.DataTree(ds)
    if "observed_data" in data:
        ds = tree["observed_data"].to_dataset()
        arr = data["observed_data"]["x"]
        names = dims["observed_x"]
        ds = xr.Dataset({"x": (names, arr)}, attrs=ds.attrs)
        tree["observed_data"] = xr.DataTree(ds)
    return tree
