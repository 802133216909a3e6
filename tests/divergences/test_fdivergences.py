"""The f-divergence family: f(1) = 0, Fenchel–Young, f** = f, activations, fused conjugates.

Tolerances (float64 numpy unless stated): identities ``ATOL = 1e-10``; the biconjugate by a
bounded scalar search ``1e-7``; fused vs naive conjugate ``RTOL = 1e-9`` where the naive form is
well conditioned (|v| <= 15) and ``1e-5`` for float32 against a float64 reference.
"""

from __future__ import annotations

import mpmath
import numpy as np
import pytest
import torch
from scipy import optimize

import gmppl.divergences as gd

ATOL = 1e-10
FAMILY = [cls() for cls in gd.FAMILY]
IDS = [type(d).__name__ for d in FAMILY]
U = np.concatenate([np.logspace(-3, 3, 61), [1.0]])


def t_grid(d: gd.FDivergence) -> np.ndarray:
    """Points inside the conjugate's domain, dense near its ends."""
    return np.asarray(d.activation(np.linspace(-12.0, 12.0, 241)))


@pytest.mark.parametrize("d", FAMILY, ids=IDS)
def test_f_at_one_is_zero_and_convex(d):
    assert float(d.f(1.0)) == 0.0
    f = np.asarray(d.f(U))
    slope = float(d.f_prime(1.0))  # the supporting line at u = 1: f(u) >= f'(1) (u - 1)
    assert np.all(np.isfinite(f)) and np.all(f >= slope * (U - 1) - ATOL * (1 + np.abs(U)))
    u = np.linspace(0.05, 6.0, 400)
    fu = np.asarray(d.f(u))
    assert np.all(fu[:-2] + fu[2:] - 2 * fu[1:-1] >= -1e-12)  # midpoint convexity
    assert np.isinf(float(d.f(-0.5)))  # the convex extension


@pytest.mark.parametrize("d", FAMILY, ids=IDS)
def test_fenchel_young_inequality_on_grids(d):
    u, t = U[:, None], t_grid(d)[None, :]
    gap = np.asarray(d.f(u)) + np.asarray(d.conjugate(t)) - u * t
    assert np.all(gap >= -ATOL * (1 + np.abs(u * t))), gap.min()


@pytest.mark.parametrize("d", FAMILY, ids=IDS)
def test_fenchel_young_equality_at_f_prime(d):
    u = np.logspace(-2, 2, 41)
    t = np.asarray(d.f_prime(u))
    lhs = np.asarray(d.f(u)) + np.asarray(d.conjugate(t))
    np.testing.assert_allclose(lhs, u * t, rtol=1e-10, atol=ATOL)


@pytest.mark.parametrize("d", FAMILY, ids=IDS)
def test_biconjugate_recovers_f(d):
    """f**(u) = sup_t (u t - f*(t)), the sup by a bounded search over the activation's input."""
    for u in [0.05, 0.3, 0.8, 1.0, 1.7, 4.0, 12.0]:
        res = optimize.minimize_scalar(
            lambda v, u=u: -(u * float(d.activation(v)) - float(d.conjugate_activation(v))),
            bounds=(-40.0, 40.0),
            method="bounded",
            options={"xatol": 1e-12},
        )
        assert abs(-res.fun - float(d.f(u))) < 1e-7 * (1 + abs(float(d.f(u)))), (u, -res.fun, float(d.f(u)))


@pytest.mark.parametrize("d", FAMILY, ids=IDS)
def test_conjugate_is_inf_outside_domain(d):
    lo, hi = d.domain.lower, d.domain.upper
    outside = [x for x in (lo - 0.1, hi + 0.1) if np.isfinite(x)]
    for t in outside:
        assert float(d.conjugate(t)) == np.inf
    assert np.isnan(float(d.conjugate(np.nan)))


@pytest.mark.parametrize("d", FAMILY, ids=IDS)
def test_activation_lands_in_domain(d):
    t = d.activation(np.linspace(-30.0, 30.0, 601))
    assert np.all(np.asarray(d.domain.contains(t)))


# f*(activation(v)) in 150-digit arithmetic, straight from the table (independent of the code)

REFERENCE = {
    "KL": lambda v: mpmath.exp(v - 1),
    "ReverseKL": lambda v: -1 - mpmath.log(mpmath.exp(-v)),
    "Pearson": lambda v: v * v / 4 + v,
    "Neyman": lambda v: 2 - 2 * mpmath.sqrt(1 - (1 - mpmath.exp(-v))),
    "SquaredHellinger": lambda v: (1 - mpmath.exp(-v)) / mpmath.exp(-v),
    "Jeffreys": lambda v: (lambda w: w + 1 / w + v - 2)(mpmath.lambertw(mpmath.exp(1 - v)).real),
    "JensenShannon": lambda v: -mpmath.log(2 - mpmath.exp(mpmath.log(2) - mpmath.log1p(mpmath.exp(-v)))) / 2,
    "GAN": lambda v: -mpmath.log(1 - mpmath.exp(-mpmath.log1p(mpmath.exp(-v)))) - 2 * mpmath.log(2),
    "TotalVariation": lambda v: mpmath.tanh(v) / 2,
}


def reference(d, v):
    with mpmath.workdps(150):
        return np.array([float(REFERENCE[type(d).__name__](mpmath.mpf(float(x)))) for x in v])


@pytest.mark.parametrize("d", FAMILY, ids=IDS)
def test_conjugate_activation_equals_conjugate_of_activation(d):
    v = np.linspace(-15.0, 15.0, 301)
    np.testing.assert_allclose(
        np.asarray(d.conjugate_activation(v)), np.asarray(d.conjugate(d.activation(v))), rtol=1e-9, atol=1e-12
    )
    v = np.linspace(-100.0, 100.0, 401)  # against 50-digit arithmetic where the naive form fails
    np.testing.assert_allclose(np.asarray(d.conjugate_activation(v)), reference(d, v), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("d", FAMILY, ids=IDS)
def test_conjugate_activation_finite_in_float32(d):
    """Finite on [-100, 100] in float32 wherever the exact value fits in float32.

    KL, Jeffreys (f*(v) ~ e^(v-1)) and squared Hellinger (e^v - 1) exceed float32's 3.4e38 for
    v > ~89; there ``inf`` is the right answer, in float64 they stay finite on the whole range.
    """
    v64 = np.linspace(-100.0, 100.0, 2001)
    ref = np.asarray(d.conjugate_activation(v64))
    assert np.all(np.isfinite(ref))
    with np.errstate(over="ignore"):
        got = np.asarray(d.conjugate_activation(v64.astype(np.float32)))
    assert got.dtype == np.float32
    fits = np.abs(ref) < 3.0e38
    assert np.all(np.isfinite(got[fits]))
    np.testing.assert_allclose(got[fits], ref[fits], rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("d", FAMILY, ids=IDS)
def test_optimal_critic_is_f_prime_of_ratio(d):
    lp, lq = np.log([0.1, 0.5, 0.2]), np.log([0.3, 0.25, 0.2])
    np.testing.assert_allclose(np.asarray(d.optimal_critic(lp, lq)), np.asarray(d.f_prime(np.exp(lp - lq))), rtol=1e-12)


@pytest.mark.parametrize("d", [d for d in FAMILY if not isinstance(d, gd.TotalVariation)], ids=IDS[:-1])
def test_derivative_of_conjugate_inverts_f_prime(d):
    """(f*)'(f'(u)) = u, by torch autograd in float64."""
    u = torch.logspace(-1.5, 1.5, 13, dtype=torch.float64)
    t = d.f_prime(u).detach().requires_grad_(True)
    (g,) = torch.autograd.grad(d.conjugate(t).sum(), t)
    torch.testing.assert_close(g, u, rtol=1e-8, atol=1e-10)


def test_nonnegative_and_zero_iff_equal_on_random_categoricals():
    rng = np.random.default_rng(1)
    for _ in range(20):
        p, q = rng.dirichlet(np.ones(5)), rng.dirichlet(np.ones(5))
        P = torch.distributions.Categorical(probs=torch.tensor(p))
        Q = torch.distributions.Categorical(probs=torch.tensor(q))
        for d in FAMILY:
            assert float(d.closed_form(P, Q)) > 1e-6, type(d).__name__
            assert abs(float(d.closed_form(P, P))) < 1e-14, type(d).__name__


def test_divergences_of_disjoint_support_use_the_slope_at_infinity():
    P = torch.distributions.Categorical(probs=torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64))
    Q = torch.distributions.Categorical(probs=torch.tensor([0.0, 0.5, 0.5], dtype=torch.float64))
    expect = {
        "KL": np.inf,
        "ReverseKL": np.inf,
        "Pearson": np.inf,
        "Neyman": np.inf,
        "Jeffreys": np.inf,
        "SquaredHellinger": 1.0,
        "TotalVariation": 0.5,
        "JensenShannon": 0.5 * np.log(2),
        "GAN": np.log(2),
    }
    for d in FAMILY:
        got = float(d.closed_form(P, Q))
        assert got == pytest.approx(expect[type(d).__name__], rel=1e-12), type(d).__name__


def test_monte_carlo_rejects_unknown_side():
    with pytest.raises(ValueError, match="under"):
        gd.KL().monte_carlo(np.zeros(3), under="x")


def test_domain_repr_and_equality():
    assert str(gd.TotalVariation.domain) == "[-0.5, 0.5]"
    assert str(gd.ReverseKL.domain) == "(-inf, 0)"
    assert gd.KL() == gd.KL() and repr(gd.KL()) == "KL()"
