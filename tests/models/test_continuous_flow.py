"""``gm.models.ContinuousFlow`` with the *exact* marginal velocity of a Gaussian target as its network.

For the conditional path ``x_t = a_t x0 + b_t x1`` (``gmppl.inference.flow_matching.path_coefficients``),
``x0 ~ N(0, I)`` independent of ``x1 ~ N(m, S)``, the marginal velocity ``E[u_t | x_t = x]`` is linear,
``v(x, t) = b'_t m + K_t (x - b_t m)`` with ``K_t = (a_t a'_t I + b_t b'_t S) C_t^{-1}``,
``C_t = a_t^2 I + b_t^2 S``; all are functions of ``S``, so the flow map is ``x_t = b_t m + C_t^{1/2} z`` and
``x(1) = m + (S + sigma_min^2 I)^{1/2} z``: the flow's law is ``N(m, S + sigma_min^2 I)`` exactly.

Stated tolerances: ``ATOL_LP`` nats for the Dopri5 likelihood at rtol = atol = 1e-7 in float64 (observed
errors ~1e-8); samples' moments within 4 standard errors; fixed-step solvers by their order (the error
ratio between 32 and 64 steps is 2 for Euler, 4 for Heun and midpoint, within ``ORDER_SLACK``; observed
1.98, 3.98, 4.05).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import gmppl as gm
from gmppl.inference.flow_matching import path_coefficients

ATOL_LP = 1e-5
ORDER_SLACK = 0.1
MU = np.array([1.0, -0.5])
COV = np.array([[1.0, 0.6], [0.6, 0.8]])
TIGHT = {"rtol": 1e-7, "atol": 1e-7}
CASES = [("ot", 0.0), ("ot", 0.1), ("vp", 0.0), ("vp", 0.05)]


def gauss_logpdf(x: np.ndarray, mu: np.ndarray, cov: np.ndarray) -> np.ndarray:
    d = x - mu
    return -0.5 * (d * np.linalg.solve(cov, d.T).T).sum(1) - 0.5 * np.linalg.slogdet(2 * math.pi * cov)[1]


def sqrtm(cov: np.ndarray) -> np.ndarray:
    lam, v = np.linalg.eigh(cov)
    return (v * np.sqrt(lam)) @ v.T


def exact_map(z: np.ndarray, mu: np.ndarray, cov: np.ndarray, sigma_min: float) -> np.ndarray:
    return mu + z @ sqrtm(cov + sigma_min**2 * np.eye(len(mu))).T


def target(mu: np.ndarray, cov: np.ndarray, sigma_min: float) -> np.ndarray:
    return cov + sigma_min**2 * np.eye(len(mu))


class TorchGaussianVelocity(torch.nn.Module):
    """The marginal velocity of the path toward ``N(mu, cov)``; with ``conditional``, ``mu`` is the context row."""

    def __init__(self, path: str, sigma_min: float, mu: np.ndarray = MU, cov: np.ndarray = COV, conditional=False):  # noqa: ANN001
        super().__init__()
        self.path, self.sigma_min, self.conditional = path, sigma_min, conditional
        self.event_shape = (len(mu),)
        self.register_buffer("mu", torch.tensor(mu, dtype=torch.float64))
        self.register_buffer("cov", torch.tensor(cov, dtype=torch.float64))

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        a, da, b, db = (v[:, None, None] for v in path_coefficients(self.path, self.sigma_min, t.double()))
        eye = torch.eye(x.shape[1], dtype=torch.float64)
        m = c.double() if self.conditional else self.mu.expand(x.shape[0], -1)
        ct = a**2 * eye + b**2 * self.cov
        k = (a * da * eye + b * db * self.cov) @ torch.linalg.inv(ct)
        return db[:, 0] * m + (k @ (x.double() - b[:, 0] * m)[..., None])[..., 0]


def jax_gaussian_velocity(path: str, sigma_min: float, mu: np.ndarray = MU, cov: np.ndarray = COV, conditional=False):  # noqa: ANN001, ANN201
    import jax.numpy as jnp

    def v(x, t, c=None):  # noqa: ANN001, ANN202
        a, da, b, db = (u[:, None, None] for u in path_coefficients(path, sigma_min, t))
        eye = jnp.eye(x.shape[1], dtype=x.dtype)
        m = c if conditional else jnp.broadcast_to(jnp.asarray(mu, x.dtype), x.shape)
        s = jnp.asarray(cov, x.dtype)
        k = (a * da * eye + b * db * s) @ jnp.linalg.inv(a**2 * eye + b**2 * s)
        return db[:, 0] * m + (k @ (x - b[:, 0] * m)[..., None])[..., 0]

    return v


POINTS = np.random.default_rng(1).multivariate_normal(MU, COV, size=16)


# ------------------------------------------------------------------ the paths
@pytest.mark.parametrize("path,sigma_min", CASES)
def test_path_coefficients_ends_and_derivatives(path: str, sigma_min: float) -> None:
    t = np.linspace(0.0, 1.0, 11)
    a, da, b, db = path_coefficients(path, sigma_min, t)
    np.testing.assert_allclose([a[0], b[0], a[-1], b[-1]], [1.0, 0.0, sigma_min, 1.0], atol=1e-15)
    h = 1e-6
    for f, df in ((0, da), (2, db)):  # central differences, error O(h^2)
        fd = (path_coefficients(path, sigma_min, t + h)[f] - path_coefficients(path, sigma_min, t - h)[f]) / (2 * h)
        np.testing.assert_allclose(df, fd, atol=1e-8)
    with pytest.raises(gm.UnknownName):
        path_coefficients("straight", 0.0, t)


# ------------------------------------------------------------------ likelihood (exact ODE)
@pytest.mark.parametrize("path,sigma_min", CASES)
def test_torch_log_prob_is_the_gaussian_density(path: str, sigma_min: float) -> None:
    d = gm.models.ContinuousFlow(TorchGaussianVelocity(path, sigma_min), **TIGHT)
    lp = d.log_prob(torch.tensor(POINTS)).numpy()
    np.testing.assert_allclose(lp, gauss_logpdf(POINTS, MU, target(MU, COV, sigma_min)), atol=ATOL_LP)


@pytest.mark.parametrize("path,sigma_min", [("ot", 0.0), ("vp", 0.05)])
def test_jax_log_prob_is_the_gaussian_density(path: str, sigma_min: float) -> None:
    import jax
    import jax.numpy as jnp

    with jax.enable_x64(True):
        d = gm.models.ContinuousFlow(jax_gaussian_velocity(path, sigma_min), event_shape=(2,), **TIGHT)
        lp = np.asarray(jax.jit(d.log_prob)(jnp.asarray(POINTS)))
    np.testing.assert_allclose(lp, gauss_logpdf(POINTS, MU, target(MU, COV, sigma_min)), atol=ATOL_LP)


class TorchCubic(torch.nn.Module):
    """``v(x, t) = x^3``: ``x(0) = x(1) / sqrt(1 + 2 x(1)^2)`` per coordinate, so ``log p(x1) = sum_j
    log N(x0_j) - 1.5 log(1 + 2 x1_j^2)`` in closed form; stiff where ``|x|`` is large (``v' = 3 x^2``)."""

    event_shape = (2,)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return x**3


class JaxCubic:
    event_shape = (2,)

    def __call__(self, x, t):  # noqa: ANN001, ANN204
        return x**3


def cubic_logpdf(x1: np.ndarray) -> np.ndarray:
    x0 = x1 / np.sqrt(1 + 2 * x1**2)
    return (-0.5 * x0**2 - 0.5 * math.log(2 * math.pi) - 1.5 * np.log1p(2 * x1**2)).sum(1)


def test_each_example_is_solved_to_the_tolerance_whatever_the_batch() -> None:
    """A stiff example among 999 easy ones keeps the accuracy it has alone (default rtol = atol = 1e-5, float32).

    With the solvers' default error norm (the RMS over the whole batch) its error was 7.4e-3 (torch) and 5.8e-3
    (JAX) in this batch against 2.2e-4 alone: the 999 easy examples diluted its error estimate ~sqrt(1000)-fold.
    Per example (`gmppl.models.ode.per_example_rms`) it is 2.2e-4 in both, the float32 floor here."""
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    x = np.concatenate([[[5.0, -5.0]], rng.normal(0.0, 0.3, size=(999, 2))]).astype(np.float32)
    want = cubic_logpdf(x.astype(np.float64))
    for flow, as_array in (
        (gm.models.ContinuousFlow(TorchCubic()), torch.as_tensor),
        (gm.models.ContinuousFlow(JaxCubic()), jnp.asarray),
    ):
        alone = float(np.asarray(flow.log_prob(as_array(x[:1])))[0])
        batch = np.asarray(flow.log_prob(as_array(x)), dtype=np.float64)
        assert abs(alone - want[0]) < 1e-3
        assert np.max(np.abs(batch - want)) < 1e-3, np.max(np.abs(batch - want))
        assert batch[0] == pytest.approx(alone, abs=2e-4)


def test_per_example_rms_is_the_largest_rms_of_an_example_on_both_engines() -> None:
    import jax.numpy as jnp

    from gmppl.models.ode import per_example_rms

    x, logdet = np.array([[3.0, 0.0], [1.0, 1.0]]), np.array([4.0, 1.0])
    want = math.sqrt((9 + 16) / 3)  # example 0: (3, 0) and 4; example 1: sqrt(3 / 3) = 1
    assert float(per_example_rms((torch.as_tensor(x), torch.as_tensor(logdet)))) == pytest.approx(want)
    assert float(per_example_rms((jnp.asarray(x), jnp.asarray(logdet)))) == pytest.approx(want, rel=1e-6)


def test_hutchinson_is_unbiased_with_its_standard_error_on_both_engines() -> None:
    """The divergence of the linear field is ``tr K_t``; Rademacher probes see the off-diagonal of ``K_t``
    (``COV`` is not diagonal), so each probe errs and the mean is within 4 standard errors of the truth."""
    import jax
    import jax.numpy as jnp

    truth = gauss_logpdf(POINTS[:6], MU, COV)
    torch.manual_seed(0)
    d = gm.models.ContinuousFlow(TorchGaussianVelocity("ot", 0.0), trace="hutchinson", **TIGHT)
    lp, se, nfe = d.log_prob_estimate(torch.tensor(POINTS[:6]), probes=32)
    assert nfe > 0 and (se > 0).all()
    assert (np.abs(lp.numpy() - truth) <= 4 * se.numpy() + ATOL_LP).all(), (lp, truth, se)
    with jax.enable_x64(True):
        dj = gm.models.ContinuousFlow(jax_gaussian_velocity("ot", 0.0), event_shape=(2,), **TIGHT)
        est = jax.jit(lambda v: dj.log_prob_estimate(v, trace="hutchinson", probes=32)[:2])
        lj, sj = (np.asarray(a) for a in est(jnp.asarray(POINTS[:6])))
    assert (sj > 0).all() and (np.abs(lj - truth) <= 4 * sj + ATOL_LP).all(), (lj, truth, sj)


def test_high_dimension_defaults_to_hutchinson_and_exact_trace_is_exact() -> None:
    dim = 20  # above exact_trace_max_dim = 16
    mu, cov = np.linspace(-1, 1, dim), np.diag(np.linspace(0.5, 2.0, dim))
    cov[0, 1] = cov[1, 0] = 0.3
    x = np.random.default_rng(4).multivariate_normal(mu, cov, size=4)
    d = gm.models.ContinuousFlow(TorchGaussianVelocity("ot", 0.0, mu, cov), probes=4, **TIGHT)
    _, se, _ = d.log_prob_estimate(torch.tensor(x))
    assert se is not None and (se > 0).all()
    lp, se, _ = d.log_prob_estimate(torch.tensor(x), trace="exact")
    assert se is None
    np.testing.assert_allclose(lp.numpy(), gauss_logpdf(x, mu, cov), atol=ATOL_LP)


# ------------------------------------------------------------------ sampling and inversion
def _check_moments(x: np.ndarray, mu: np.ndarray, cov: np.ndarray) -> None:
    n = len(x)
    assert (np.abs(x.mean(0) - mu) <= 4 * np.sqrt(np.diag(cov) / n)).all(), (x.mean(0), mu)
    se_cov = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / n)  # var of a sample covariance entry
    assert (np.abs(np.cov(x.T) - cov) <= 4 * se_cov).all(), (np.cov(x.T), cov)


def test_samples_have_the_target_moments_on_both_engines() -> None:
    import jax

    torch.manual_seed(0)
    d = gm.models.ContinuousFlow(TorchGaussianVelocity("ot", 0.1), rtol=1e-4, atol=1e-4)
    x = d.expand((2000,)).sample().numpy()
    assert x.shape == (2000, 2)
    _check_moments(x, MU, target(MU, COV, 0.1))
    dj = gm.models.ContinuousFlow(jax_gaussian_velocity("vp", 0.0), event_shape=(2,), rtol=1e-4, atol=1e-4)
    xj = np.asarray(jax.jit(lambda k: dj.expand((2000,)).sample(k))(jax.random.PRNGKey(0)))
    assert xj.shape == (2000, 2)
    _check_moments(xj, MU, COV)


def _order_ratios(transform) -> dict[str, float]:  # noqa: ANN001
    z = np.random.default_rng(2).normal(size=(64, 2))
    truth = exact_map(z, MU, COV, 0.0)
    out = {}
    for solver in ("euler", "heun", "midpoint"):
        err = [np.abs(transform(z, solver, n) - truth).max() for n in (32, 64)]
        out[solver] = err[0] / err[1]
    return out


def test_fixed_step_solvers_converge_at_their_order_on_both_engines() -> None:
    import jax
    import jax.numpy as jnp

    # The VP path: on the OT path midpoint's leading error term vanishes for this field (observed order 3).
    d = gm.models.ContinuousFlow(TorchGaussianVelocity("vp", 0.0))

    def torch_transform(z, solver, n):  # noqa: ANN001, ANN202
        x, info = d.transform(torch.tensor(z), solver=solver, steps=n)
        assert info["nfe"] == {"euler": 1, "heun": 2, "midpoint": 2}[solver] * n
        return x.numpy()

    with jax.enable_x64(True):
        dj = gm.models.ContinuousFlow(jax_gaussian_velocity("vp", 0.0), event_shape=(2,))
        run = jax.jit(lambda z, solver, n: dj.transform(z, solver=solver, steps=n)[0], static_argnums=(1, 2))

        def jax_transform(z, solver, n):  # noqa: ANN001, ANN202
            return np.asarray(run(jnp.asarray(z), solver, n))

        ratios = {"pyro": _order_ratios(torch_transform), "numpyro": _order_ratios(jax_transform)}
    for engine, r in ratios.items():
        assert abs(r["euler"] / 2 - 1) < ORDER_SLACK, (engine, r)
        assert abs(r["heun"] / 4 - 1) < ORDER_SLACK and abs(r["midpoint"] / 4 - 1) < ORDER_SLACK, (engine, r)


def test_invert_undoes_transform_and_trajectories_are_recorded() -> None:
    import jax
    import jax.numpy as jnp

    z = np.random.default_rng(3).normal(size=(8, 2))
    d = gm.models.ContinuousFlow(TorchGaussianVelocity("vp", 0.0), **TIGHT)
    x, info = d.transform(torch.tensor(z))
    np.testing.assert_allclose(x.numpy(), exact_map(z, MU, COV, 0.0), atol=1e-5)
    np.testing.assert_allclose(d.invert(x).numpy(), z, atol=1e-5)
    x, info = d.generate(10, solver="heun", steps=20, record=5)
    assert x.shape == (10, 2) and info["nfe"] == 40 and len(info["trajectory"]) == 5
    with jax.enable_x64(True):
        dj = gm.models.ContinuousFlow(jax_gaussian_velocity("vp", 0.0), event_shape=(2,), **TIGHT)
        there_and_back = jax.jit(lambda z: dj.invert(dj.transform(z)[0]))
        np.testing.assert_allclose(np.asarray(there_and_back(jnp.asarray(z))), z, atol=1e-5)
        xj, info = jax.jit(lambda k: dj.generate(k, 10, solver="euler", steps=20, record=5))(jax.random.PRNGKey(0))
        assert xj.shape == (10, 2) and int(info["nfe"]) == 20 and info["trajectory"].shape == (5, 10, 2)


# ------------------------------------------------------------------ conditional flows
def test_context_rows_are_the_conditional_means_on_both_engines() -> None:
    """``v(x, t, c)`` the exact field toward ``N(c, COV)``: each row's density and transport use its own ``c``."""
    import jax
    import jax.numpy as jnp

    c = np.random.default_rng(5).normal(size=(6, 2)) * 2
    x = c + np.random.default_rng(6).multivariate_normal(np.zeros(2), COV, size=6)
    truth = np.array([gauss_logpdf(x[i : i + 1], c[i], COV)[0] for i in range(6)])
    d = gm.models.ContinuousFlow(TorchGaussianVelocity("ot", 0.0, conditional=True), torch.tensor(c), **TIGHT)
    assert tuple(d.batch_shape) == (6,)
    np.testing.assert_allclose(d.log_prob(torch.tensor(x)).numpy(), truth, atol=ATOL_LP)
    assert d.sample((3,)).shape == (3, 6, 2)
    z = np.random.default_rng(7).normal(size=(6, 2))
    x1 = d.transform(torch.tensor(z), d.context_rows((6,)))[0].numpy()
    np.testing.assert_allclose(x1, c + z @ sqrtm(COV).T, atol=1e-5)
    with jax.enable_x64(True):
        net = jax_gaussian_velocity("ot", 0.0, conditional=True)
        dj = gm.models.ContinuousFlow(net, jnp.asarray(c), event_shape=(2,), **TIGHT)
        np.testing.assert_allclose(np.asarray(jax.jit(dj.log_prob)(jnp.asarray(x))), truth, atol=ATOL_LP)
        fast = gm.models.ContinuousFlow(net, jnp.asarray(c), event_shape=(2,), solver="euler", steps=2)
        assert fast.sample(jax.random.PRNGKey(0), (3,)).shape == (3, 6, 2)


# ------------------------------------------------------------------ shapes and bad input
def test_event_shape_is_found_by_probing_on_both_engines() -> None:
    import equinox as eqx
    import jax

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(4, 3)

        def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.lin(torch.cat([x, t[:, None]], -1))

    assert tuple(gm.models.ContinuousFlow(Net()).event_shape) == (3,)
    mlp = eqx.nn.MLP(4, 3, 8, 1, key=jax.random.PRNGKey(0))
    jnet = lambda x, t: jax.vmap(mlp)(jax.numpy.concatenate([x, t[:, None]], -1))
    assert tuple(gm.models.ContinuousFlow(jnet).event_shape) == (3,)
    assert tuple(gm.models.ContinuousFlow(jnet, event_shape=(3,)).event_shape) == (3,)


def test_bad_arguments_are_refused() -> None:
    net = TorchGaussianVelocity("ot", 0.0)
    with pytest.raises(gm.UnknownName):
        gm.models.ContinuousFlow(net, solver="rk45")
    with pytest.raises(gm.UnknownName):
        gm.models.ContinuousFlow(net, trace="sometimes")
    for kw in ({"steps": 0}, {"probes": 0}, {"rtol": -1.0}, {"event_shape": ()}):
        with pytest.raises(gm.ModelError):
            gm.models.ContinuousFlow(net, **kw)
    with pytest.raises(gm.ModelError, match="not callable"):
        gm.models.ContinuousFlow(3.0)
    with pytest.raises(gm.ModelError, match="torch tensor"):
        gm.models.ContinuousFlow(net, context=np.zeros((3, 2)))
    with pytest.raises(gm.ModelError, match="context row"):
        gm.models.ContinuousFlow(net, context=torch.zeros(3, 2)).expand((4,))
    d = gm.models.ContinuousFlow(net)
    with pytest.raises(gm.UnknownName):
        d.transform(torch.zeros(2, 2, dtype=torch.float64), solver="rk45")
    with pytest.raises(gm.ModelError):
        d.log_prob_estimate(torch.zeros(2, 2, dtype=torch.float64), trace="hutchinson", probes=-1)


# ------------------------------------------------------------------ as a program's site
def _programs() -> dict:
    import jax
    import numpyro
    import pyro
    from numpyro.contrib.module import eqx_module

    tv = gm.models.ScoreMLP(2, width=16)
    jv = gm.models.ScoreMLP(2, width=16, key=jax.random.PRNGKey(0))

    def pyro_model(x=None, n=None):  # noqa: ANN001, ANN202
        net = pyro.module("velocity", tv)
        with pyro.plate("data", x.shape[0] if x is not None else n):
            pyro.sample("x", gm.models.ContinuousFlow(net, solver="euler", steps=4).mask(True), obs=x)

    def numpyro_model(x=None, n=None):  # noqa: ANN001, ANN202
        net = eqx_module("velocity", jv)
        with numpyro.plate("data", x.shape[0] if x is not None else n):
            numpyro.sample("x", gm.models.ContinuousFlow(net, solver="euler", steps=4), obs=x)

    return {"pyro": pyro_model, "numpyro": numpyro_model}


@pytest.mark.parametrize("engine", ["pyro", "numpyro"])
def test_a_continuous_flow_site_offers_a_velocity_field_only(engine: str) -> None:
    from gmppl.engines import make_program

    x = np.random.default_rng(0).normal(size=(8, 2)).astype(np.float32)
    program = make_program(engine, _programs()[engine], observed="x", latent="z", device="cpu")
    info = program.inspect(x)
    assert "velocity_field" in info.capabilities and "density" not in info.capabilities
    assert info.x_event_shape == (2,)
    for backend in (gm.inference.Likelihood(), gm.inference.Score(), gm.inference.Adversarial()):
        with pytest.raises(gm.NotSupported, match="FlowMatching"):
            backend.check(info)
    gm.inference.FlowMatching().check(info)
