"""Bundled data: shapes, the ring/grid geometry, file loading without pickles."""

from __future__ import annotations

import numpy as np
import pytest

import gmppl as gm


def test_bundled_shapes():
    assert gm.datasets.moons(100).shape == (100, 2)
    d = gm.datasets.digits()
    assert d.shape == (1797, 64) and d.min() >= 0 and d.max() <= 1


def test_ring_and_grid_geometry():
    x = gm.datasets.ring(8000, seed=1)
    r = np.linalg.norm(x, axis=1)
    # every draw sits within 5 std of radius 2 (std 0.02 per coordinate)
    assert np.all(np.abs(r - 2.0) < 5 * 0.02 * np.sqrt(2))
    c = gm.datasets.grid_centers()
    assert c.shape == (25, 2) and np.allclose(c.mean(0), 0)
    nearest = np.argmin(((gm.datasets.grid(5000)[:, None] - c[None]) ** 2).sum(-1), 1)
    counts = np.bincount(nearest, minlength=25)
    # multinomial(5000, 1/25): 200 +- 14 per mode; 6 sd bounds
    assert counts.min() > 200 - 6 * 14 and counts.max() < 200 + 6 * 14


def test_file_formats(tmp_path):
    x = np.arange(12, dtype=np.float32).reshape(6, 2)
    np.save(tmp_path / "a.npy", x)
    np.savez(tmp_path / "b.npz", train=x, other=x * 2)
    np.savetxt(tmp_path / "c.csv", x, delimiter=",")
    assert np.array_equal(gm.datasets.load(str(tmp_path / "a.npy")), x)
    assert np.array_equal(gm.datasets.load(str(tmp_path / "b.npz"), key="other"), x * 2)
    assert np.allclose(gm.datasets.load(str(tmp_path / "c.csv")), x)
    with pytest.raises(gm.DataError, match="no such file"):
        gm.datasets.load(str(tmp_path / "missing.npy"))
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError):  # numpy refuses: object arrays need pickles
        gm.datasets.load(str(tmp_path / "obj.npy"))
