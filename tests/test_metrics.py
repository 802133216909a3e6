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


# ---------------------------------------------------------------------- c2st
# The held-out predictions' binomial stderr understates the spread of the cross-validated accuracy when
# P = Q (the folds share training examples): measured 1.18x and 1.24x (+-0.09) at 500 and 2000 examples
# per sample, 1.04x for N(0, 1) vs N(1, 1). Tolerances use ``C2ST_SPREAD = 1.5`` times stderr, above all three.
C2ST_SPREAD = 1.5
Z = 4.0
# How far below the Bayes accuracy the default MLP may land (its excess error on a 1-D threshold problem):
# measured +0.0008 +- 0.0011 above it on average over 200 samples of 500 + 500 (N(0, 1) vs N(1, 1)).
C2ST_EXCESS = 0.01


def test_c2st_of_one_distribution_is_one_half() -> None:
    """Two samples of N(0, I_2): 0.5 lies within 4 spreads (4 x 1.5 stderr) of the value, a > 4-sigma
    event to miss (the expectation is exactly 1/2 for any classifier, see the module notes)."""
    rng = np.random.default_rng(2)
    n = 1000
    e = gm.metrics.c2st(rng.normal(size=(n, 2)), rng.normal(size=(n, 2)))
    assert abs(e.value - 0.5) <= Z * C2ST_SPREAD * e.stderr, e
    assert 0 < e.stderr <= 0.25 * np.sqrt(2 / n)  # the binomial stderr, at most its value at 1/2
    assert float(e) == e.value and e.interval[0] < e.value < e.interval[1]


@pytest.mark.parametrize("d", [1.0, 2.0])
def test_c2st_of_a_shift_is_the_bayes_accuracy(d: float) -> None:
    """N(0, 1) vs N(d, 1): the Bayes rule (threshold d/2) is right with probability Phi(d/2), and no classifier's
    expected held-out accuracy exceeds it. Above it only by noise, below it by noise plus ``C2ST_EXCESS``."""
    from scipy.stats import norm

    rng = np.random.default_rng(1)
    n = 2000
    e = gm.metrics.c2st(rng.normal(size=(n, 1)), rng.normal(d, 1.0, size=(n, 1)))
    bayes = norm.cdf(d / 2)
    noise = Z * C2ST_SPREAD * e.stderr
    assert bayes - noise - C2ST_EXCESS <= e.value <= bayes + noise, (e, bayes)


def test_c2st_of_far_apart_samples_is_near_one_and_the_interval_is_wilsons() -> None:
    rng = np.random.default_rng(2)
    n = 500
    e = gm.metrics.c2st(rng.normal(size=(n, 2)), rng.normal(size=(n, 2)) + [5.0, 0.0])
    assert e.value >= 0.98, e  # the Bayes accuracy is Phi(2.5) = 0.9938
    # equal sizes: the value is the accuracy k / N, the interval Wilson's for k of N at 95%
    big_n, z = 2 * n, 1.959963984540054
    p = e.value
    centre = (p + z**2 / (2 * big_n)) / (1 + z**2 / big_n)
    half = z / (1 + z**2 / big_n) * np.sqrt(p * (1 - p) / big_n + z**2 / (4 * big_n**2))
    np.testing.assert_allclose(e.interval, (centre - half, centre + half), rtol=1e-12)
    # the per-sample binomial stderr is at most the pooled one (p (1 - p) is concave)
    assert e.interval[1] <= 1.0 and 0 < e.stderr <= np.sqrt(p * (1 - p) / big_n)


def test_c2st_sees_more_than_the_first_two_moments() -> None:
    """Moons against a Gaussian with their mean and covariance: the default MLP tells them apart, a logistic
    regression on the raw features (a classifier passed by the user) cannot."""
    from sklearn.datasets import make_moons
    from sklearn.linear_model import LogisticRegression

    x = make_moons(400, noise=0.05, random_state=0)[0]
    y = np.random.default_rng(1).multivariate_normal(x.mean(0), np.cov(x.T), size=400)
    mlp = gm.metrics.c2st(x, y)
    linear = gm.metrics.c2st(x, y, classifier=LogisticRegression())
    assert mlp.value - Z * C2ST_SPREAD * mlp.stderr > 0.6, mlp  # measured 0.81 at 500 + 500
    assert abs(linear.value - 0.5) <= Z * C2ST_SPREAD * linear.stderr, linear


def test_c2st_balances_unequal_sizes_and_takes_every_array_type() -> None:
    """A classifier that always answers the majority class is right on all of y and none of x: the balanced
    accuracy is exactly 1/2 (the plain accuracy would be 3/4). Torch and JAX arrays give numpy's answer."""
    import jax.numpy as jnp
    import torch
    from sklearn.dummy import DummyClassifier
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(100, 3)), rng.normal(size=(300, 3)) + 1.0
    e = gm.metrics.c2st(x, y, classifier=DummyClassifier(strategy="most_frequent"))
    assert e.value == 0.5 and e.stderr == 0.0
    linear = LogisticRegression()
    want = gm.metrics.c2st(x, y, classifier=linear, seed=3).value
    assert gm.metrics.c2st(torch.as_tensor(x), torch.as_tensor(y), classifier=linear, seed=3).value == want
    xj, yj = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
    assert gm.metrics.c2st(xj, yj, classifier=linear, seed=3).value == pytest.approx(want, abs=1 / 300)
    images = gm.metrics.c2st(rng.normal(size=(60, 2, 2)), rng.normal(size=(60, 2, 2)), folds=3, classifier=linear)
    assert 0.0 <= images.value <= 1.0


def test_c2st_refuses_bad_input() -> None:
    rng = np.random.default_rng(0)
    ok = rng.normal(size=(50, 2))
    with pytest.raises(gm.DataError, match="shape per example"):
        gm.metrics.c2st(ok, rng.normal(size=(50, 3)))
    bad = ok.copy()
    bad[3, 1] = np.nan
    with pytest.raises(gm.DataError, match="NaN"):
        gm.metrics.c2st(ok, bad)
    with pytest.raises(gm.DataError, match="at least 5"):
        gm.metrics.c2st(ok, ok[:4])
    with pytest.raises(gm.DataError, match="folds"):
        gm.metrics.c2st(ok, ok, folds=1)
    with pytest.raises(gm.DataError, match="scalar"):
        gm.metrics.c2st(np.float64(1.0), ok)
