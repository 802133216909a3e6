"""Validation of user data: one place that turns numpy/torch/JAX arrays into checked numpy."""

from __future__ import annotations

from typing import Any

import numpy as np

from gmppl.errors import DataError


def to_numpy(x: Any) -> np.ndarray:
    """Any array (numpy, torch on any device, JAX, nested lists) as a numpy array."""
    if hasattr(x, "detach"):  # torch
        return x.detach().cpu().numpy()
    return np.asarray(x)


def check_data(data: Any, *, name: str = "data") -> np.ndarray:
    """Return ``data`` as a floating numpy array with examples on axis 0, or raise `DataError`.

    Refuses empty data, non-numeric dtypes, NaN/inf and scalars, before any work starts.
    """
    if data is None:
        raise DataError(f"{name} is None: pass an array with examples on axis 0.")
    try:
        arr = to_numpy(data)
    except Exception as e:  # pragma: no cover - exotic inputs
        raise DataError(f"{name} could not be read as an array ({type(data).__name__}): {e}") from e
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise DataError(f"{name} has dtype {arr.dtype}; gmppl needs numbers (float32 or float64).")
    if arr.ndim == 0:
        raise DataError(f"{name} is a scalar; pass an array with examples on axis 0, e.g. shape (n, d).")
    if arr.shape[0] == 0:
        raise DataError(f"{name} is empty (shape {arr.shape}); pass at least one example on axis 0.")
    if np.issubdtype(arr.dtype, np.complexfloating):
        raise DataError(f"{name} is complex ({arr.dtype}); gmppl needs real numbers.")
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float32)
    bad = ~np.isfinite(arr)
    if bad.any():
        idx = np.argwhere(bad)[0]
        raise DataError(
            f"{name} contains {int(bad.sum())} NaN/inf value(s), the first at index {tuple(int(i) for i in idx)}; "
            "remove or impute them before fitting."
        )
    return arr
