"""``examples/bnn_regression.py`` runs end to end with tiny settings; its data are upstream's ``get_data``."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

EXAMPLE = Path(__file__).parents[1] / "examples" / "bnn_regression.py"


def load_example():
    spec = importlib.util.spec_from_file_location("bnn_regression", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_data_are_upstreams_generator():
    """Upstream's ``get_data``: polynomial features (1, x, x^2), standardised ``Y`` whose noise about the generator's
    ``f`` is ``sigma_obs = 0.05``; the held-out points are the same generator on the training scale."""
    ex = load_example()
    X, Y, X_test, Y_test = ex.get_data(N=100)
    assert X.shape == (100, 3) and Y.shape == (100, 1) and X_test.shape == (500, 3) and Y_test.shape == (500, 1)
    np.testing.assert_allclose(X[:, 0], 1.0)
    np.testing.assert_allclose(X[:, 2], X[:, 1] ** 2, rtol=1e-6)
    np.testing.assert_allclose(X_test[[0, -1], 1], [-1.3, 1.3], rtol=1e-6)
    assert abs(Y.mean()) < 1e-6 and abs(Y.std() - 1) < 1e-5
    f, x, y = ex.upstream_data(100)
    np.random.seed(0)  # noqa: NPY002 (upstream's own calls) upstream's stream: W first, then the noise
    w = 0.5 * np.random.randn(3)  # noqa: NPY002
    noise = 0.05 * np.random.randn(100)  # noqa: NPY002
    np.testing.assert_allclose(y, x * w[1] + x**2 * w[2] + w[0] + 0.5 * (0.5 + x) ** 2 * np.sin(4 * x) + noise)
    resid = Y_test[:, 0] * y.std() + y.mean() - f(X_test[:, 1].astype(float))
    assert 0.04 < resid.std() < 0.06  # fresh noise of sd 0.05 (500 draws: sd of the estimate 0.0016)


@pytest.mark.slow  # NUTS compiles ~300 XLA programs whatever the draws: ~25 s CPU; the closed-form NUTS tests are in the default suite
def test_bnn_regression_runs(tmp_path, capsys):
    metrics = load_example().main(
        ["--warmup", "50", "--samples", "50", "--max-tree-depth", "5", "--out", str(tmp_path)]
    )
    for name in ("bnn.png", "metrics.json"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    for key in ("coverage90_within_training_range", "heldout_lpd_within_per_point", "loo_elpd", "loo_se"):
        assert math.isfinite(metrics[key]), key
    assert metrics["heldout_points_within"] + metrics["heldout_points_outside"] == 500
    printed = capsys.readouterr().out
    assert "coverage" in printed and "nan" not in printed.lower()
