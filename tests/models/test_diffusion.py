"""``gm.models.Diffusion`` with the *exact* score of a known density as its network.

With the true score the probability-flow ODE is exact, so its likelihood equals
``log p_eps(x) + log N(x_1; 0, s^2 I) - log p_1(x_1)`` (the ODE starts at ``eps`` and ends in the prior,
not in ``p_1``). For a Gaussian the flow map is known, ``x_t = alpha_t mu + C_t^{1/2} C_eps^{-1/2}
(x - alpha_eps mu)`` with ``C_t = alpha_t^2 Sigma + sigma_t^2 I``, so that value is exact. The mixture
is centred (zero mean), so its prior mismatch is ``O(alpha_1^2 |Cov - I| |x_1|^2)``: ``ATOL_MIX``. Stated tolerance:
``ATOL_LP`` nats in float64, for the solver's rtol = atol = 1e-5.
Samplers are checked by moments: sample mean within 4 standard errors plus the discretisation bias
allowance ``BIAS`` (Euler–Maruyama with 500 steps has O(1/500) bias).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.integrate
import torch

import gmppl as gm
from gmppl.models.sde import SDE

ATOL_LP = 2e-3
ATOL_MIX = 5e-3
BIAS = 0.03
MU = np.array([1.0, -0.5])
COV = np.array([[1.0, 0.6], [0.6, 0.8]])
MIX_MU = np.array([[-1.5, 0.5], [1.0, 1.0], [2.25, -2.75]])  # weighted mean 0
MIX_S = np.array([0.3, 0.5, 0.4])
MIX_W = np.array([0.5, 0.3, 0.2])


# ------------------------------------------------------------------ exact answers
def gauss_logpdf(x: np.ndarray, mu: np.ndarray, cov: np.ndarray) -> np.ndarray:
    d = x - mu
    sol = np.linalg.solve(cov, d.T).T
    return -0.5 * (d * sol).sum(1) - 0.5 * np.linalg.slogdet(2 * math.pi * cov)[1]


def marginal_np(sde: SDE, t: float) -> tuple[float, float]:
    a, s = sde.marginal(np.asarray(t, dtype=np.float64))
    return float(a), float(s)


def gauss_t_logpdf(x: np.ndarray, sde: SDE, t: float) -> np.ndarray:
    a, s = marginal_np(sde, t)
    return gauss_logpdf(x, a * MU, a**2 * COV + s**2 * np.eye(2))


def gauss_ode_logpdf(x: np.ndarray, sde: SDE) -> np.ndarray:
    """What the exact probability-flow ODE from ``eps`` to 1 gives: see the module docstring."""
    lam, v = np.linalg.eigh(COV)

    def c_pow(t: float, p: float) -> np.ndarray:
        a, s = marginal_np(sde, t)
        return (v * (a**2 * lam + s**2) ** p) @ v.T

    a_e, _ = marginal_np(sde, sde.t_eps)
    a_1, s_1 = marginal_np(sde, 1.0)
    x1 = a_1 * MU + (x - a_e * MU) @ (c_pow(1.0, 0.5) @ c_pow(sde.t_eps, -0.5)).T
    prior = gauss_logpdf(x1, np.zeros(2), sde.prior_std**2 * np.eye(2))
    return gauss_t_logpdf(x, sde, sde.t_eps) + prior - gauss_logpdf(x1, a_1 * MU, a_1**2 * COV + s_1**2 * np.eye(2))


def mixture_t_logpdf(x: np.ndarray, sde: SDE, t: float) -> np.ndarray:
    a, s = marginal_np(sde, t)
    comps = [
        np.log(w) + gauss_logpdf(x, a * m, (a**2 * sk**2 + s**2) * np.eye(2))
        for w, m, sk in zip(MIX_W, MIX_MU, MIX_S, strict=True)
    ]
    return np.logaddexp.reduce(np.stack(comps), axis=0)


class TorchGaussianScore(torch.nn.Module):
    """``grad log p_t`` of ``p_t = N(alpha mu, alpha^2 Sigma + sigma^2 I)``."""

    event_shape = (2,)

    def __init__(self, sde: SDE, dtype: torch.dtype = torch.float64):
        super().__init__()
        self.sde = sde
        self.register_buffer("mu", torch.tensor(MU, dtype=dtype))
        self.register_buffer("cov", torch.tensor(COV, dtype=dtype))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a, s = self.sde.marginal(t.to(x.dtype))
        c = a[:, None, None] ** 2 * self.cov + s[:, None, None] ** 2 * torch.eye(2, dtype=x.dtype)
        return -torch.linalg.solve(c, (x - a[:, None] * self.mu)[..., None])[..., 0]


class TorchMixtureScore(torch.nn.Module):
    """``grad log p_t`` of an isotropic Gaussian mixture: responsibilities times component scores."""

    event_shape = (2,)

    def __init__(self, sde: SDE):
        super().__init__()
        self.sde = sde
        for name, v in (("mu", MIX_MU), ("s", MIX_S), ("w", MIX_W)):
            self.register_buffer(name, torch.tensor(v, dtype=torch.float64))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a, s = self.sde.marginal(t.to(x.dtype))
        var = a[:, None] ** 2 * self.s**2 + s[:, None] ** 2  # (B, K)
        diff = x[:, None, :] - a[:, None, None] * self.mu  # (B, K, 2)
        logn = -0.5 * (diff**2).sum(-1) / var - torch.log(2 * math.pi * var)
        r = torch.softmax(torch.log(self.w) + logn, -1)
        return (r[..., None] * (-diff / var[..., None])).sum(1)


def jax_gaussian_score(sde: SDE):  # noqa: ANN201
    import jax.numpy as jnp

    def score(x, t):  # noqa: ANN001, ANN202
        a, s = sde.marginal(t.astype(x.dtype))
        c = a[:, None, None] ** 2 * jnp.asarray(COV, x.dtype) + s[:, None, None] ** 2 * jnp.eye(2, dtype=x.dtype)
        return -jnp.linalg.solve(c, (x - a[:, None] * jnp.asarray(MU, x.dtype))[..., None])[..., 0]

    return score


def jax_mixture_score(sde: SDE):  # noqa: ANN201
    import jax
    import jax.numpy as jnp

    def score(x, t):  # noqa: ANN001, ANN202
        a, s = sde.marginal(t.astype(x.dtype))
        var = a[:, None] ** 2 * jnp.asarray(MIX_S, x.dtype) ** 2 + s[:, None] ** 2
        diff = x[:, None, :] - a[:, None, None] * jnp.asarray(MIX_MU, x.dtype)
        logn = -0.5 * (diff**2).sum(-1) / var - jnp.log(2 * math.pi * var)
        r = jax.nn.softmax(jnp.log(jnp.asarray(MIX_W, x.dtype)) + logn, -1)
        return (r[..., None] * (-diff / var[..., None])).sum(1)

    return score


POINTS = np.random.default_rng(1).multivariate_normal(MU, COV, size=24)
_k = np.random.default_rng(2).choice(3, size=24, p=MIX_W)
MIX_POINTS = MIX_MU[_k] + MIX_S[_k, None] * np.random.default_rng(3).normal(size=(24, 2))  # draws of the mixture


# ------------------------------------------------------------------ the SDEs
@pytest.mark.parametrize("kind", ["vp", "subvp", "ve"])
def test_marginal_solves_moment_odes(kind: str) -> None:
    """alpha_t, sigma_t^2 solve d alpha/dt = f alpha, d v/dt = 2 f v + g^2 (v(0) = 0 for VP/sub-VP)."""
    sde = SDE(kind)
    t0 = 0.0

    def rhs(t: float, y: np.ndarray) -> list[float]:
        f = float(sde.drift_coef(np.asarray(t)))
        g2 = float(sde.diffusion2(np.asarray(t)))
        return [f * y[0], 2 * f * y[1] + g2]

    sol = scipy.integrate.solve_ivp(rhs, (t0, 1.0), [1.0, 0.0], rtol=1e-10, atol=1e-12, dense_output=True)
    for t in (0.05, 0.3, 0.7, 1.0):
        a, s = marginal_np(sde, t)
        alpha, var = sol.sol(t)
        np.testing.assert_allclose([a, s**2], [alpha, var], rtol=1e-6, atol=1e-9)


def test_unknown_sde_and_sampler_are_refused() -> None:
    net = gm.models.ScoreMLP(2)
    with pytest.raises(gm.UnknownName):
        gm.models.Diffusion(net, sde="ddim")
    with pytest.raises(gm.UnknownName):
        gm.models.Diffusion(net, sampler="heun")


# ------------------------------------------------------------------ likelihood (exact ODE)
@pytest.mark.parametrize("kind", ["vp", "subvp", "ve"])
def test_torch_ode_likelihood_of_gaussian(kind: str) -> None:
    sde = SDE(kind)
    d = gm.models.Diffusion(TorchGaussianScore(sde), sde=sde)
    lp = d.log_prob(torch.tensor(POINTS)).numpy()
    np.testing.assert_allclose(lp, gauss_ode_logpdf(POINTS, sde), atol=ATOL_LP)


def test_torch_ode_likelihood_of_mixture_and_hutchinson() -> None:
    sde = SDE("vp")
    d = gm.models.Diffusion(TorchMixtureScore(sde), sde=sde)
    truth = mixture_t_logpdf(MIX_POINTS, sde, sde.t_eps)
    np.testing.assert_allclose(d.log_prob(torch.tensor(MIX_POINTS)).numpy(), truth, atol=ATOL_MIX)
    # Hutchinson: unbiased, so within 4 standard errors (+ solver tolerance) of the truth.
    torch.manual_seed(0)
    lp, se, nfe = d.log_prob_estimate(torch.tensor(MIX_POINTS[:8]), trace="hutchinson", probes=32)
    assert nfe > 0 and (se > 0).all()
    assert (np.abs(lp.numpy() - truth[:8]) <= 4 * se.numpy() + ATOL_MIX).all(), (lp, truth[:8], se)


@pytest.mark.parametrize("target", ["gaussian", "mixture"])
def test_jax_ode_likelihood_matches_truth_and_torch(target: str) -> None:
    import jax
    import jax.numpy as jnp

    sde = SDE("vp")
    pts = POINTS if target == "gaussian" else MIX_POINTS
    truth = gauss_ode_logpdf(pts, sde) if target == "gaussian" else mixture_t_logpdf(pts, sde, sde.t_eps)
    with jax.enable_x64(True):
        net = (jax_gaussian_score if target == "gaussian" else jax_mixture_score)(sde)
        d = gm.models.Diffusion(net, sde=sde, event_shape=(2,))
        lp = np.asarray(jax.jit(d.log_prob)(jnp.asarray(pts)))
        if target == "mixture":  # Hutchinson: within 4 standard errors (+ tolerance) of the truth
            est = jax.jit(lambda v: d.log_prob_estimate(v, trace="hutchinson", probes=16)[:2])
            hl, se = (np.asarray(a) for a in est(jnp.asarray(pts[:8])))
            assert (se > 0).all() and (np.abs(hl - truth[:8]) <= 4 * se + ATOL_MIX).all(), (hl, truth[:8], se)
    np.testing.assert_allclose(lp, truth, atol=ATOL_LP if target == "gaussian" else ATOL_MIX)
    tnet = TorchGaussianScore(sde) if target == "gaussian" else TorchMixtureScore(sde)
    lt = gm.models.Diffusion(tnet, sde=sde).log_prob(torch.tensor(pts)).numpy()
    np.testing.assert_allclose(lp, lt, atol=ATOL_LP)  # the two engines agree


# ------------------------------------------------------------------ samplers
def _check_moments(x: np.ndarray, mu: np.ndarray, cov: np.ndarray) -> None:
    n = len(x)
    se_mean = np.sqrt(np.diag(cov) / n)
    assert (np.abs(x.mean(0) - mu) <= 4 * se_mean + BIAS).all(), (x.mean(0), mu)
    # var of a sample covariance entry: (S_ii S_jj + S_ij^2) / n
    se_cov = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / n)
    assert (np.abs(np.cov(x.T) - cov) <= 4 * se_cov + 2 * BIAS).all(), (np.cov(x.T), cov)


@pytest.mark.parametrize("sampler", ["em", "pc", "ode"])
def test_torch_samplers_reproduce_gaussian(sampler: str) -> None:
    sde = SDE("vp")
    torch.manual_seed(0)
    d = gm.models.Diffusion(TorchGaussianScore(sde), sde=sde, sampler=sampler, steps=500, rtol=1e-4, atol=1e-4)
    x = d.expand((2000,)).sample().numpy()
    assert x.shape == (2000, 2)
    _check_moments(x, MU, COV)


@pytest.mark.parametrize("sampler", ["em", "ode", pytest.param("pc", marks=pytest.mark.slow)])
def test_jax_samplers_reproduce_gaussian(sampler: str) -> None:
    import jax

    sde = SDE("vp")
    d = gm.models.Diffusion(jax_gaussian_score(sde), sde=sde, event_shape=(2,), sampler=sampler, rtol=1e-4, atol=1e-4)
    x = np.asarray(jax.jit(lambda k: d.expand((2000,)).sample(k))(jax.random.PRNGKey(0)))
    assert x.shape == (2000, 2)
    _check_moments(x, MU, COV)


def test_trajectory_and_nfe() -> None:
    sde = SDE("vp")
    d = gm.models.Diffusion(TorchGaussianScore(sde), sde=sde, steps=50)
    x, info = d.generate(10, record=5)
    assert x.shape == (10, 2) and info["nfe"] == 50 and len(info["trajectory"]) == 5
    x, info = d.generate(10, sampler="ode", record=5)
    assert len(info["trajectory"]) == 5 and info["nfe"] > 6


# ------------------------------------------------------------------ as a program's site
def test_diffusion_is_a_plate_site_on_both_engines() -> None:
    import jax
    import numpyro
    import pyro
    from numpyro.contrib.module import eqx_module

    from gmppl.engines import make_program

    s = gm.models.ScoreMLP(2)

    def pmodel(x=None, n=None):  # noqa: ANN001, ANN202
        net = pyro.module("score", s)
        with pyro.plate("data", x.shape[0] if x is not None else n):
            pyro.sample("x", gm.models.Diffusion(net, sde="vp", steps=20).mask(True), obs=x)

    e = gm.models.ScoreMLP(2, key=jax.random.PRNGKey(0))

    def nmodel(x=None, n=None):  # noqa: ANN001, ANN202
        net = eqx_module("score", e)
        with numpyro.plate("data", x.shape[0] if x is not None else n):
            numpyro.sample("x", gm.models.Diffusion(net, sde="ve", steps=20), obs=x)

    x = np.random.default_rng(0).normal(size=(8, 2)).astype(np.float32)
    for engine, model in (("pyro", pmodel), ("numpyro", nmodel)):
        info = make_program(engine, model, observed="x", latent="z", device="cpu").inspect(x)
        assert "score_network" in info.capabilities and info.x_event_shape == (2,), (engine, info.capabilities)


def test_event_shape_found_by_probing() -> None:
    class Net(torch.nn.Module):  # the contract's network: no event_shape attribute
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Linear(4, 3)

        def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.net(torch.cat([x, t[:, None]], -1))

    assert tuple(gm.models.Diffusion(Net()).event_shape) == (3,)
    assert tuple(gm.models.Diffusion(gm.models.ScoreUNet(1, 8, 8)).event_shape) == (1, 8, 8)


# ------------------------------------------------------------------ the U-Net learns a known image-shaped score
def _image_gaussian() -> tuple[np.ndarray, np.ndarray]:
    """``N(mu, Sigma)`` on 1x4x4 images: a bright centre, pixel correlations ``0.8 exp(-d^2 / 2)`` + 0.2 I."""
    r, c = np.divmod(np.arange(16), 4)
    d2 = (r[:, None] - r[None]) ** 2 + (c[:, None] - c[None]) ** 2
    mu = np.exp(-((r - 1.5) ** 2 + (c - 1.5) ** 2) / 2.0)
    return mu, 0.8 * np.exp(-d2 / 2.0) + 0.2 * np.eye(16)


def _unet_rel_errors(net: torch.nn.Module, mu: np.ndarray, cov: np.ndarray, sde: SDE) -> np.ndarray:
    """``E||s_net - s*||^2 / E||s*||^2`` under ``p_t`` at ``t`` in ``TIMES_UNET``, ``s* = -C_t^{-1}(x - alpha_t mu)``."""
    rng = np.random.default_rng(3)
    out = []
    for t in TIMES_UNET:
        a, s = (float(v) for v in sde.marginal(np.asarray(t)))
        c = a**2 * cov + s**2 * np.eye(16)
        x = rng.multivariate_normal(a * mu, c, size=1000)
        true = -np.linalg.solve(c, (x - a * mu).T).T
        with torch.no_grad():
            xt = torch.tensor(x, dtype=torch.float32).reshape(-1, 1, 4, 4)
            got = net(xt, torch.full((len(x),), t)).reshape(-1, 16).double().numpy()
        out.append(((got - true) ** 2).sum(1).mean() / (true**2).sum(1).mean())
    return np.array(out)


TIMES_UNET = (0.05, 0.2, 0.5, 0.9)


def test_score_unet_learns_the_closed_form_score_of_an_image_gaussian() -> None:
    """DSM with the default image network on 4x4 Gaussian images: at every noise level the trained
    U-Net's relative Fisher error to the exact score is below 0.1 and at most a fifth of the untrained
    network's (which is ~1.1: its output is unrelated to the score). Observed after 350 steps:
    0.066, 0.009, 0.004, 0.004 at t = 0.05, 0.2, 0.5, 0.9 (the smallest noise level, whose score is
    largest, is hardest); the Monte Carlo error of each ratio over 1000 points is ~5% of its value.
    """
    import pyro

    torch.set_num_threads(1)
    torch.manual_seed(0)
    mu, cov = _image_gaussian()
    sde = SDE("vp")
    net = gm.models.ScoreUNet(1, 4, 4)
    before = _unet_rel_errors(net, mu, cov, sde)
    x = np.random.default_rng(0).multivariate_normal(mu, cov, size=4000).astype(np.float32).reshape(-1, 1, 4, 4)

    def model(x=None, n=None):  # noqa: ANN001, ANN202
        s = pyro.module("score", net)
        with pyro.plate("data", x.shape[0] if x is not None else n):
            pyro.sample("x", gm.models.Diffusion(s, sde=sde, steps=10), obs=x)

    fit = gm.fit(
        model, x, gm.inference.Score(), steps=350, batch_size=128, seed=0, optim=gm.optim.Adam(lr=3e-3), progress=False
    )
    fit.write_back()  # the fitted weights into `net` (a fit leaves the caller's module as it was)
    after = _unet_rel_errors(net, mu, cov, sde)
    assert (after < 0.1).all() and (after < before / 5).all(), (before, after)
