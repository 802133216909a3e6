"""Two-sample statistics: Wasserstein-1, MMD, energy distance.

Exact identities to ``1e-10``; estimates within ``K_SE = 4`` standard errors. The MMD test's
level: under ``P = Q``, over ``R = 60`` seeded repetitions at level 0.05, the number of
rejections is Binomial(60, <= 0.05) (permutation p-values are exact), so at most
``binom.ppf(0.999, 60, 0.05) = 9`` rejections with probability >= 0.999.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import optimize, special, stats

import gmppl.divergences as gd
from gmppl.errors import DataError

K_SE = 4.0


@pytest.mark.parametrize("engine", ["numpy", "torch", "jax"])
def test_w1_1d_equals_sorted_samples_formula(engine, x64):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=200), rng.standard_t(3, size=200) + 0.5
    want = np.mean(np.abs(np.sort(x) - np.sort(y)))
    if engine == "torch":
        x, y = torch.tensor(x), torch.tensor(y)
    elif engine == "jax":
        import jax.numpy as jnp

        x, y = jnp.asarray(x), jnp.asarray(y)
    est = gd.Wasserstein1()(x, y)
    assert est.value == pytest.approx(want, rel=1e-10)
    assert 0 < est.stderr < est.value and est.interval[0] < est.value < est.interval[1]
    assert float(est) == est.value
    assert gd.Wasserstein1(method="sliced").distance(x, y) == pytest.approx(want, rel=1e-10)  # 1-D: the same


def test_w1_unequal_sizes_matches_scipy():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(70, 1)), rng.exponential(size=(45, 1))
    assert gd.Wasserstein1(num_bootstrap=0).distance(x, y) == pytest.approx(
        stats.wasserstein_distance(x[:, 0], y[:, 0]), rel=1e-10
    )


def test_w1_exact_in_2d_is_the_optimal_assignment_and_sliced_is_below():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(40, 2)), rng.normal(size=(40, 2)) + [1.0, 0.5]
    cost = np.linalg.norm(x[:, None] - y[None], axis=-1)
    rows, cols = optimize.linear_sum_assignment(cost)  # equal sizes: OT is an assignment
    exact = gd.Wasserstein1().distance(x, y)
    assert exact == pytest.approx(cost[rows, cols].mean(), rel=1e-10)
    sliced = gd.Wasserstein1(method="sliced", num_projections=64).distance(x, y)
    assert 0 < sliced <= exact  # |<theta, x - y>| <= |x - y|


def test_w1_dual_bound_with_a_lipschitz_critic():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=500), rng.normal(size=500) + 1.0
    w = gd.Wasserstein1(num_bootstrap=0)
    bound = float(w.variational_bound(x, y))  # T(x) = -x is 1-Lipschitz: E_P[T] - E_Q[T] = E y - E x
    assert float(w.variational_bound(-x, -y)) <= w.distance(x, y) + 1e-12
    assert bound == pytest.approx(np.mean(x) - np.mean(y))
    assert float(w.variational_bound_from_logits(-x, -y)) == pytest.approx(-bound)
    assert math.isnan(w(x, y).stderr)


def test_mmd_keeps_its_level_under_the_null():
    reps, level = 60, 0.05
    rejections = 0
    for r in range(reps):
        rng = np.random.default_rng(100 + r)
        x, y = rng.normal(size=(40, 2)), rng.normal(size=(40, 2))
        rejections += gd.MMD().permutation_test(x, y, num_permutations=99, seed=r) <= level
    assert rejections <= stats.binom.ppf(0.999, reps, level), rejections


def test_mmd_detects_a_shift_and_reports_a_pvalue():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(100, 2)), rng.normal(size=(100, 2)) + [1.5, 0.0]
    est = gd.MMD(num_permutations=199)(x, y)
    assert est.pvalue is not None and est.pvalue <= 0.01
    assert est.value > K_SE * est.stderr
    assert "p=" in repr(est) and "±" in repr(est)


def test_mmd_jackknife_stderr_matches_the_spread_over_repetitions():
    values, stderrs = [], []
    for r in range(30):
        rng = np.random.default_rng(200 + r)
        est = gd.MMD(bandwidth=1.0)(rng.normal(size=(80, 1)), rng.normal(size=(80, 1)) + 0.5)
        values.append(est.value)
        stderrs.append(est.stderr)
    ratio = np.mean(stderrs) / np.std(values, ddof=1)
    assert 0.6 < ratio < 1.7, ratio  # a std from 30 draws is itself uncertain by ~13%


def test_mmd_fixed_bandwidth_matches_brute_force_and_statistic_is_differentiable():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(12, 3)), rng.normal(size=(9, 3))
    k = lambda a, b: np.exp(-0.5 * np.sum((a[:, None] - b[None]) ** 2, -1) / 1.5**2)
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    want = (kxx.sum() - 12) / (12 * 11) + (kyy.sum() - 9) / (9 * 8) - 2 * kxy.mean()
    mmd = gd.MMD(bandwidth=1.5)
    assert mmd(x, y).value == pytest.approx(want, rel=1e-10)
    xt = torch.tensor(x, requires_grad=True)
    s = mmd.statistic(xt, torch.tensor(y))
    s.backward()
    assert s.item() == pytest.approx(want, rel=1e-10) and torch.all(torch.isfinite(xt.grad))


def test_median_heuristic_statistic_agrees_across_engines(x64):
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(30, 2)), rng.normal(size=(25, 2)) + 0.3
    want = gd.MMD()(x, y).value
    assert float(gd.MMD().statistic(torch.tensor(x), torch.tensor(y))) == pytest.approx(want, rel=1e-10)
    got = jax.jit(gd.MMD().statistic)(jnp.asarray(x), jnp.asarray(y))
    assert float(got) == pytest.approx(want, rel=1e-10)
    g = jax.grad(lambda a: gd.EnergyDistance().statistic(a, jnp.asarray(y)))(jnp.asarray(x))
    assert bool(jnp.all(jnp.isfinite(g)))


def test_energy_distance_against_its_population_value():
    """X ~ N(0, 1), Y ~ N(1, 1): 2 E|X - Y| - E|X - X'| - E|Y - Y'| with E|N(m, s^2)| in closed form."""

    def abs_mean(m, s):
        return s * math.sqrt(2 / math.pi) * math.exp(-(m**2) / (2 * s * s)) + m * (1 - 2 * special.ndtr(-m / s))

    truth = 2 * abs_mean(1.0, math.sqrt(2)) - 2 * abs_mean(0.0, math.sqrt(2))
    rng = np.random.default_rng(7)
    est = gd.EnergyDistance()(rng.normal(size=1500), rng.normal(size=1500) + 1.0)
    assert abs(est.value - truth) < K_SE * est.stderr, (est, truth)


def test_bad_samples_raise_data_errors():
    w = gd.Wasserstein1()
    with pytest.raises(DataError, match="NaN"):
        w(np.array([0.0, np.nan]), np.zeros(2))
    with pytest.raises(DataError, match="features"):
        w(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(DataError, match="at least"):
        gd.MMD()(np.zeros((2, 1)), np.zeros((5, 1)))
    with pytest.raises(DataError, match="scalar"):
        gd.EnergyDistance()(np.float64(1.0), np.zeros(3))
    with pytest.raises(ValueError):
        gd.Wasserstein1(method="fast")


def test_estimate_is_a_frozen_value_with_an_interval():
    e = gd.Estimate.of_mean([1.0, 2.0, 3.0, 4.0])
    assert float(e) == 2.5 and e.interval[0] < 2.5 < e.interval[1]
    assert f"{e:.2f}" == "2.50 ± 0.65"
    with pytest.raises(AttributeError):
        e.value = 3.0  # type: ignore[misc]
