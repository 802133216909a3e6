"""The arithmetic ``gmppl.models.sde`` shares between the engines, against independent float64 numpy.

Each function runs on torch float64 tensors and on JAX float64 arrays (jitted) and is compared with the
same formula written out here in numpy from the SDEs' closed forms (the module docstring), not through
``SDE``'s methods. The inputs are O(1) and each result is a few dozen float64 operations, so both
engines agree with numpy to ``RTOL = 1e-12`` (about 1e4 units of roundoff).

Exact answers: the DSM loss of the exact score of a point mass at ``m`` (``-(x - alpha_t m) / sigma_t^2``)
is zero for every ``t`` and ``z``; Euler–Maruyama with ``noise=None`` is its noise-free mean.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from gmppl.models.sde import SDE, dsm_loss, importance_times, langevin_step, probability_flow_drift, reverse_step

RTOL = 1e-12
KINDS = ("vp", "subvp", "ve")
SHAPE = (5, 2, 3)  # a batch of 2x3 "images": the functions reduce over all but the first axis


# ------------------------------------------------------------------ independent numpy coefficients
def coefficients(sde: SDE, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(f, g^2, alpha, sigma)`` at ``t`` from the closed forms."""
    b0, b1, s0, s1 = sde.beta_min, sde.beta_max, sde.sigma_min, sde.sigma_max
    if sde.kind == "ve":
        s = s0 * (s1 / s0) ** t
        return 0.0 * t, 2 * s**2 * math.log(s1 / s0), np.ones_like(t), np.sqrt(s**2 - s0**2)
    beta, big_b = b0 + (b1 - b0) * t, b0 * t + 0.5 * (b1 - b0) * t**2
    alpha = np.exp(-0.5 * big_b)
    if sde.kind == "vp":
        return -0.5 * beta, beta, alpha, np.sqrt(1 - alpha**2)
    return -0.5 * beta, beta * (1 - np.exp(-2 * big_b)), alpha, 1 - alpha**2


def net_np(x: np.ndarray, t: np.ndarray) -> np.ndarray:
    """A smooth, t-dependent stand-in for a score network."""
    return np.tanh(x) * (1 + t.reshape(-1, 1, 1)) - 0.3 * x


def _engines() -> list[tuple[str, Callable[[np.ndarray], Any], Any, Callable[[Any], Any]]]:
    import array_api_compat.torch as xp_torch
    import jax.numpy as jnp

    return [
        ("torch", torch.as_tensor, xp_torch, lambda f: f),
        ("jax", jnp.asarray, jnp, __import__("jax").jit),
    ]


def _net(xp: Any) -> Callable[[Any, Any], Any]:
    return lambda x, t: xp.tanh(x) * (1 + xp.reshape(t, (-1, 1, 1))) - 0.3 * x


@pytest.fixture
def x64():  # noqa: ANN201
    import jax

    with jax.enable_x64(True):
        yield


def _inputs(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "x": rng.normal(size=SHAPE),
        "z": rng.normal(size=SHAPE),
        "z2": rng.normal(size=SHAPE),
        "t": rng.uniform(1e-3, 1.0, size=SHAPE[0]),
    }


# ------------------------------------------------------------------ DSM loss
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("weighting", ["sigma2", "likelihood"])
def test_dsm_loss_matches_numpy(kind: str, weighting: str, x64: None) -> None:
    sde = SDE(kind)
    d = _inputs()
    _, g2, a, s = coefficients(sde, d["t"])
    col = (-1, 1, 1)
    xt = a.reshape(col) * d["x"] + s.reshape(col) * d["z"]
    want = ((s.reshape(col) * net_np(xt, d["t"]) + d["z"]) ** 2).sum(axis=(1, 2))
    if weighting == "likelihood":
        want = want * g2 / s**2
    for name, arr, xp, jit in _engines():
        fn = jit(lambda x, t, z, xp=xp: dsm_loss(xp, sde, _net(xp), x, t, z, weighting))
        got = np.asarray(fn(arr(d["x"]), arr(d["t"]), arr(d["z"])))
        assert got.shape == (SHAPE[0],), name
        np.testing.assert_allclose(got, want, rtol=RTOL, err_msg=name)


@pytest.mark.parametrize("kind", KINDS)
def test_dsm_loss_of_the_exact_score_of_a_point_mass_is_zero(kind: str, x64: None) -> None:
    """``p_t = N(alpha_t m, sigma_t^2 I)``: ``sigma s*(x_t) + z = -(sigma z) / sigma + z = 0`` for all ``t, z``.

    Only rounding remains: ``x_t - alpha_t m`` carries an absolute error of a few ``u (|alpha m| + |z|)``
    (``u = 2^-53``), magnified by ``1 / sigma_t`` in ``sigma s*``; bound each entry by
    ``8 u (max|alpha m| + max|z|) / sigma_t`` and the loss by the sum of their squares times the weight.
    """
    sde = SDE(kind)
    d = _inputs(1)
    m = np.random.default_rng(2).normal(size=SHAPE[1:])
    x0 = np.broadcast_to(m, SHAPE).copy()
    _, g2, a, s = coefficients(sde, d["t"])
    entry = 8 * 2.0**-53 * (np.abs(a[:, None] * m.reshape(1, -1)).max(1) + np.abs(d["z"]).max()) / s
    bound = {"sigma2": m.size * entry**2, "likelihood": m.size * entry**2 * g2 / s**2}
    for name, arr, xp, jit in _engines():
        mu = arr(m)

        def exact(x: Any, t: Any, xp: Any = xp, mu: Any = mu) -> Any:
            a, s = sde.marginal(t, xp)
            return -(x - xp.reshape(a, (-1, 1, 1)) * mu) / xp.reshape(s, (-1, 1, 1)) ** 2

        for weighting in ("sigma2", "likelihood"):
            fn = jit(lambda x, t, z, xp=xp, w=weighting, exact=exact: dsm_loss(xp, sde, exact, x, t, z, w))
            got = np.asarray(fn(arr(x0), arr(d["t"]), arr(d["z"])))
            assert np.all((got >= 0) & (got <= bound[weighting])), (name, weighting, got, bound[weighting])


# ------------------------------------------------------------------ samplers' steps
@pytest.mark.parametrize("kind", KINDS)
def test_reverse_step_matches_numpy(kind: str, x64: None) -> None:
    sde = SDE(kind)
    d = _inputs(3)
    t, dt = 0.37, 0.01
    f, g2, _, _ = coefficients(sde, np.asarray(t))
    s = net_np(d["x"], np.full(SHAPE[0], t))
    mean = d["x"] - (f * d["x"] - g2 * s) * dt
    for name, arr, xp, jit in _engines():
        step = jit(lambda x, t, s, n, xp=xp: reverse_step(xp, sde, x, t, dt, s, n))
        got = np.asarray(step(arr(d["x"]), arr(np.asarray(t)), arr(s), arr(d["z"])))
        np.testing.assert_allclose(got, mean + np.sqrt(g2 * dt) * d["z"], rtol=RTOL, err_msg=name)
        last = jit(lambda x, t, s, xp=xp: reverse_step(xp, sde, x, t, dt, s))
        got = np.asarray(last(arr(d["x"]), arr(np.asarray(t)), arr(s)))
        np.testing.assert_allclose(got, mean, rtol=RTOL, err_msg=name)


@pytest.mark.parametrize("kind", KINDS)
def test_langevin_step_matches_numpy(kind: str, x64: None) -> None:
    sde = SDE(kind)
    d = _inputs(4)
    t, dt, snr = 0.61, 0.002, 0.16
    _, g2, _, _ = coefficients(sde, np.asarray(t))
    s = net_np(d["x"], np.full(SHAPE[0], t))
    a = 1.0 if kind == "ve" else 1.0 - g2 * dt
    norms = lambda v: np.sqrt((v.reshape(SHAPE[0], -1) ** 2).sum(1))  # noqa: E731
    e = 2 * a * (snr * norms(d["z"]).mean() / norms(s).mean()) ** 2
    want = d["x"] + e * s + np.sqrt(2 * e) * d["z"]
    for name, arr, xp, jit in _engines():
        step = jit(lambda x, t, s, z, xp=xp: langevin_step(xp, sde, x, t, dt, s, z, snr))
        got = np.asarray(step(arr(d["x"]), arr(np.asarray(t)), arr(s), arr(d["z"])))
        np.testing.assert_allclose(got, want, rtol=RTOL, err_msg=name)


def test_langevin_step_is_finite_for_a_zero_score(x64: None) -> None:
    """``||s|| = 0``: the floor 1e-12 keeps the step finite (``x + sqrt(2 e) z``) rather than NaN."""
    sde = SDE("vp")
    d = _inputs(5)
    for name, arr, xp, _ in _engines():
        got = np.asarray(
            langevin_step(xp, sde, arr(d["x"]), arr(np.asarray(0.5)), 0.01, arr(0 * d["x"]), arr(d["z"]), 0.1)
        )
        assert np.isfinite(got).all(), name


@pytest.mark.parametrize("kind", KINDS)
def test_probability_flow_drift_matches_numpy(kind: str, x64: None) -> None:
    sde = SDE(kind)
    d = _inputs(6)
    t = 0.2
    f, g2, _, _ = coefficients(sde, np.asarray(t))
    s = net_np(d["x"], np.full(SHAPE[0], t))
    for name, arr, xp, jit in _engines():
        drift = jit(lambda x, t, s, xp=xp: probability_flow_drift(xp, sde, x, t, s))
        got = np.asarray(drift(arr(d["x"]), arr(np.asarray(t)), arr(s)))
        np.testing.assert_allclose(got, f * d["x"] - 0.5 * g2 * s, rtol=RTOL, err_msg=name)


# ------------------------------------------------------------------ importance sampling of t
@pytest.mark.parametrize("kind", KINDS)
def test_importance_times_follow_the_likelihood_weight_and_give_an_unbiased_loss(kind: str) -> None:
    """``t(u)`` inverts the CDF of ``q(t)`` proportional to ``g^2 / sigma^2`` on ``[eps, 1]`` (checked against the
    numerically integrated weight at 9 quantiles, and ``t`` monotone in ``u``), and ``E_u[w h(t(u))]`` equals
    ``E_{t ~ U(eps, 1)}[g^2 / sigma^2 h(t)]`` for a smooth ``h`` (the importance-sampled loss is unbiased),
    both by quadrature in float64."""
    sde = SDE(kind)
    eps = sde.t_eps
    # the weight g^2 / sigma^2 from the closed forms, on a fine grid dense near eps, where it peaks
    grid = eps + (1 - eps) * np.linspace(0.0, 1.0, 400_001) ** 4
    _, g2, _, sigma = coefficients(sde, grid)
    r = g2 / sigma**2
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (r[1:] + r[:-1]) * np.diff(grid))])
    total = cdf[-1]
    u = torch.tensor(np.linspace(0.05, 0.95, 9), dtype=torch.float64)
    t, w = importance_times(torch, sde, u)
    t = t.numpy()
    assert np.all(np.diff(t) > 0) and t[0] >= eps and t[-1] <= 1.0
    np.testing.assert_allclose(np.interp(t, grid, cdf) / total, u.numpy(), atol=1e-4)
    np.testing.assert_allclose(w.numpy(), total / (1 - eps), rtol=1e-4)  # constant: g^2 / (sigma^2 (1 - eps) q)
    # unbiasedness: midpoint rule in u against the trapezoid rule in t
    n = 200_000
    um = torch.tensor((np.arange(n) + 0.5) / n, dtype=torch.float64)
    tm, wm = importance_times(torch, sde, um)
    h = lambda s: 1.0 + np.sin(3.0 * s)  # noqa: E731
    lhs = float(np.mean(wm.numpy() * h(tm.numpy())))
    rh = r * h(grid)
    rhs = float(np.sum(0.5 * (rh[1:] + rh[:-1]) * np.diff(grid))) / (1 - eps)
    assert lhs == pytest.approx(rhs, rel=1e-3)
