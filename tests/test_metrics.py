"""``gm.metrics.mode_coverage`` against hand-computed values on constructed samples (exact answers)."""

from __future__ import annotations

import numpy as np
import pytest

import gmppl as gm


def ring(k: int = 8, radius: float = 2.0) -> np.ndarray:
    a = 2 * np.pi * np.arange(k) / k
    return radius * np.stack([np.cos(a), np.sin(a)], 1)


def test_perfect_generator_has_every_mode_and_zero_reverse_kl() -> None:
    c = ring()
    x = np.repeat(c, 50, axis=0) + 0.01 * np.tile([[1.0, 0.0]], (400, 1))  # 0.5 std from each centre
    m = gm.metrics.mode_coverage(x, c, 0.02)
    assert (m.modes, m.num_modes, m.high_quality) == (8, 8, 1.0)
    assert m.reverse_kl == pytest.approx(0.0, abs=1e-12)
    assert m.counts.tolist() == [50] * 8


def test_mode_collapse_and_low_quality_samples() -> None:
    c = ring()
    # 300 samples on mode 0, 60 on mode 3, 40 far from every mode (between modes, radius 1)
    far = np.array([[np.cos(np.pi / 8), np.sin(np.pi / 8)]]) * 1.0
    x = np.concatenate([np.repeat(c[:1], 300, 0), np.repeat(c[3:4], 60, 0), np.repeat(far, 40, 0)])
    m = gm.metrics.mode_coverage(x, c, 0.02)
    # default threshold: a fifth of N w_k = 0.2 * 400 / 8 = 10 samples
    assert m.modes == 2
    assert m.high_quality == pytest.approx(360 / 400)
    h = np.array([300, 60]) / 360
    assert m.reverse_kl == pytest.approx(float(np.sum(h * np.log(h * 8))), rel=1e-12)
    # a mode with fewer samples than the threshold is not captured
    x2 = np.concatenate([x, np.repeat(c[5:6], 9, 0)])
    assert gm.metrics.mode_coverage(x2, c, 0.02, min_count=10).modes == 2
    assert gm.metrics.mode_coverage(x2, c, 0.02, min_count=9).modes == 3


def test_high_quality_boundary_is_three_std() -> None:
    c = np.zeros((1, 1))
    x = np.array([[0.299], [0.301], [-0.299], [-0.5]])
    m = gm.metrics.mode_coverage(x, c, 0.1, min_count=1)
    assert m.high_quality == 0.5 and m.modes == 1


def test_weights_enter_the_reverse_kl() -> None:
    c = np.array([[0.0], [10.0]])
    x = np.array([[0.0]] * 70 + [[10.0]] * 30)
    m = gm.metrics.mode_coverage(x, c, 1.0, weights=[0.7, 0.3])
    assert m.reverse_kl == pytest.approx(0.0, abs=1e-12)
    m = gm.metrics.mode_coverage(x, c, 1.0)
    assert m.reverse_kl == pytest.approx(0.7 * np.log(1.4) + 0.3 * np.log(0.6), rel=1e-12)


def test_bad_input_is_refused() -> None:
    with pytest.raises(gm.DataError):
        gm.metrics.mode_coverage(np.ones((3, 2)), np.ones((2, 3)), 0.1)
    with pytest.raises(gm.DataError):
        gm.metrics.mode_coverage(np.array([[np.nan, 0.0]]), np.ones((2, 2)), 0.1)
    with pytest.raises(gm.DataError):
        gm.metrics.mode_coverage(np.ones((3, 2)), np.ones((2, 2)), 0.0)
