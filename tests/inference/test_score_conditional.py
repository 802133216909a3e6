"""Conditional diffusion (``Diffusion(net, context=c)``) and ``Score`` with inputs, on both engines, against exact
answers.

The target is ``x | c ~ N(m c, s^2 I)`` in 2-D (``c`` a scalar per row). Under the VP SDE its noised marginal is
``x_t | c ~ N(alpha_t m c, v_t I)``, ``v_t = alpha_t^2 s^2 + sigma_t^2``, so the exact conditional score
``-(x - alpha_t m c) / v_t`` is a network with no parameters, and:

* the DSM loss has the closed-form expectation ``E_t lambda(t) d (1 - sigma_t^2 / v_t)`` (per example, the same for
  every ``c``; ``lambda = 1`` for ``weighting="sigma2"``, ``g^2 / sigma^2`` for ``"likelihood"``). With
  guidance dropout ``p`` each dropped row is scored at the null context ``c' = 0``: the network is off by
  ``Delta = alpha_t m (c' - c) / v_t``, and since ``E[s* + z / sigma_t | x_t, c] = 0`` (Tweedie) the loss grows by
  exactly ``p E_t[sigma_t^2 alpha_t^2 |m|^2 / v_t^2] E[c^2]``. The Monte Carlo mean over ``K`` independent
  minibatches (fresh ``x``, ``c``, ``t``, ``z`` each) is within 4 standard errors of the quadrature value;
* the probability-flow ODE is exact, so its likelihood is the closed form of ``tests/models/test_diffusion.py``
  per row: ``log p_eps(x | c) + log N(x_1; 0, I) - log p_1(x_1 | c)`` with the flow map
  ``x_t = alpha_t m c + sqrt(v_t / v_eps) (x - alpha_eps m c)``; tolerance ``ATOL_LP`` in float64 for the solver's
  rtol = atol = 1e-5;
* the guided score with the zeros null context is ``(1 + w) s(x, t, c) - w s(x, t, 0) = -(x - alpha_t (1 + w) m c)
  / v_t``, the exact score of ``N((1 + w) m c, s^2 I)``: guided samples have mean ``(1 + w) m c`` and sd ``s``
  (unguided: ``w = 0``). Per row, means within 4 standard errors plus the Euler–Maruyama bias allowance ``BIAS``
  (500 steps: O(1/500)), sds likewise (standard error ``s / sqrt(2 n)``).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.integrate
import torch

import gmppl as gm
from gmppl.engines import make_program
from gmppl.engines.calls import make_call
from gmppl.models.diffusion import find_diffusion
from gmppl.models.sde import SDE

ENGINES = ["pyro", "numpyro"]
M = np.array([1.5, -1.0])
S = 0.5
TAU = 1.5  # c ~ N(0, TAU^2) in the loss test
ATOL_LP = 2e-3
BIAS = 0.03
ROWS = np.array([-1.0, 0.0, 2.0])


# ------------------------------------------------------------------ exact answers
def v_t(sde: SDE, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a, sig = (np.asarray(u, dtype=np.float64) for u in sde.marginal(np.asarray(t, dtype=np.float64)))
    return a, sig, a**2 * S**2 + sig**2


def expected_dsm_loss(sde: SDE, weighting: str, dropout: float = 0.0) -> float:
    def integrand(t: float) -> float:
        a, sig, v = (float(u) for u in v_t(sde, t))
        inner = 2 * (1 - sig**2 / v) + dropout * sig**2 * a**2 * float(M @ M) * TAU**2 / v**2
        return inner * (float(sde.diffusion2(np.asarray(t))) / sig**2 if weighting == "likelihood" else 1.0)

    eps = sde.t_eps
    return scipy.integrate.quad(integrand, eps, 1.0, limit=200)[0] / (1.0 - eps)


def iso_logpdf(x: np.ndarray, mu: np.ndarray, var: float) -> np.ndarray:
    return -0.5 * ((x - mu) ** 2).sum(1) / var - math.log(2 * math.pi * var)


def ode_logpdf(x: np.ndarray, c: np.ndarray, sde: SDE) -> np.ndarray:
    """What the exact probability-flow ODE from ``eps`` to 1 gives, per row given ``c`` (module docstring)."""
    mu = c[:, None] * M
    a_e, _, v_e = (float(u) for u in v_t(sde, sde.t_eps))
    a_1, _, v_1 = (float(u) for u in v_t(sde, 1.0))
    x1 = a_1 * mu + math.sqrt(v_1 / v_e) * (x - a_e * mu)
    return iso_logpdf(x, a_e * mu, v_e) + iso_logpdf(x1, 0 * mu, 1.0) - iso_logpdf(x1, a_1 * mu, v_1)


class TorchConditionalScore(torch.nn.Module):
    """``grad_x log p_t(x | c) = -(x - alpha_t m c) / v_t``, called as ``net(x, t, c)``."""

    event_shape = (2,)

    def __init__(self, sde: SDE):
        super().__init__()
        self.sde = sde
        self.register_buffer("m", torch.tensor(M, dtype=torch.float64))

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        a, sig = self.sde.marginal(t.double())
        v = a**2 * S**2 + sig**2
        return (-(x.double() - a[:, None] * c.double() * self.m) / v[:, None]).to(x.dtype)


def jax_conditional_score(sde: SDE):  # noqa: ANN201
    import jax.numpy as jnp

    def score(x, t, c):  # noqa: ANN001, ANN202
        a, sig = sde.marginal(t.astype(x.dtype))
        v = a**2 * S**2 + sig**2
        return -(x - a[:, None] * c.astype(x.dtype) * jnp.asarray(M, x.dtype)) / v[:, None]

    return score


def exact_program(engine: str, sde: SDE, **kwargs):  # noqa: ANN003, ANN201
    """``x ~ Diffusion(exact score, context=c)`` in a plate, as a bound program taking the input ``c``."""
    if engine == "pyro":
        import pyro

        net = TorchConditionalScore(sde)

        def model(x=None, c=None):  # noqa: ANN001, ANN202
            with pyro.plate("data", c.shape[0]):
                pyro.sample("x", gm.models.Diffusion(net, sde=sde, context=c, **kwargs), obs=x)
    else:
        import numpyro

        net = jax_conditional_score(sde)

        def model(x=None, c=None):  # noqa: ANN001, ANN202
            with numpyro.plate("data", c.shape[0]):
                d = gm.models.Diffusion(net, sde=sde, context=c, event_shape=(2,), **kwargs)
                numpyro.sample("x", d, obs=x)

    call = make_call(model, "x", ("c",))
    return make_program(engine, model, observed="x", latent="z", device="cpu", call=call)


def draw(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    c = TAU * rng.normal(size=(n, 1))
    return c * M + S * rng.normal(size=(n, 2)), c


# ------------------------------------------------------------------ (i) the DSM loss, exactly
@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(("weighting", "dropout"), [("sigma2", 0.0), ("likelihood", 0.0), ("sigma2", 0.5)])
def test_conditional_dsm_loss_of_the_exact_score_is_the_closed_form(
    engine: str, weighting: str, dropout: float
) -> None:
    sde = SDE("vp")
    rng = np.random.default_rng(0)
    backend = gm.inference.Score(weighting=weighting, guidance_dropout=dropout)
    program = exact_program(engine, sde, steps=5)
    x, c = draw(rng, 8)
    info = program.inspect(x.astype(np.float32), {"c": c.astype(np.float32)})
    backend.check(info)
    plan = backend.prepare(program, info, x, seed=0, inputs={"c": c})
    k, n = 200, 256
    if engine == "pyro":
        torch.manual_seed(0)
        losses = []
        for _ in range(k):
            x, c = draw(rng, n)
            losses.append(float(backend.torch_loss(program, plan, torch.tensor(x), {"c": torch.tensor(c)})[0]))
    else:
        import jax
        import jax.numpy as jnp

        loss = jax.jit(backend.jax_loss(program, plan))
        losses = []
        for kk in jax.random.split(jax.random.PRNGKey(0), k):
            x, c = draw(rng, n)
            rows = {"c": jnp.asarray(c, jnp.float32)}
            losses.append(float(loss(program.params, jnp.asarray(x, jnp.float32), kk, rows)[0]))
    losses = np.array(losses)
    truth = expected_dsm_loss(sde, weighting, dropout)
    se = losses.std(ddof=1) / np.sqrt(k)
    assert abs(losses.mean() - truth) <= 4 * se, (losses.mean(), truth, se)
    if dropout:  # the dropped rows' excess is visible: the no-dropout value is many standard errors below
        assert expected_dsm_loss(sde, weighting) < truth - 8 * se


# ------------------------------------------------------------------ (ii) the ODE likelihood per row
@pytest.mark.parametrize("engine", ENGINES)
def test_conditional_ode_likelihood_is_the_closed_form_per_row(engine: str) -> None:
    sde = SDE("vp")
    x, c = draw(np.random.default_rng(1), 12)
    truth = ode_logpdf(x, c[:, 0], sde)
    if engine == "pyro":
        d = gm.models.Diffusion(TorchConditionalScore(sde), sde=sde, context=torch.tensor(c))
        assert tuple(d.batch_shape) == (12,)
        lp = d.log_prob(torch.tensor(x)).numpy()
        # the same rows twice (a sample dimension): each x is paired with its own row of the context
        lp2 = d.log_prob(torch.tensor(np.stack([x, x]))).numpy()
    else:
        import jax
        import jax.numpy as jnp

        with jax.enable_x64(True):
            d = gm.models.Diffusion(jax_conditional_score(sde), sde=sde, context=jnp.asarray(c), event_shape=(2,))
            assert tuple(d.batch_shape) == (12,)
            lp = np.asarray(jax.jit(d.log_prob)(jnp.asarray(x)))
            lp2 = np.asarray(jax.jit(d.log_prob)(jnp.asarray(np.stack([x, x]))))
    np.testing.assert_allclose(lp, truth, atol=ATOL_LP)
    np.testing.assert_allclose(lp2, np.stack([truth, truth]), atol=ATOL_LP)
    # and it is a likelihood given c: the wrong rows give another answer
    assert np.abs(ode_logpdf(x, c[::-1, 0], sde) - truth).max() > 1.0


# ------------------------------------------------------------------ (iii) samples per row, and guidance
def _samples(engine: str, sde: SDE, n: int, seed: int, **kwargs) -> np.ndarray:  # noqa: ANN003
    """``n`` draws per row of ``ROWS``, shape ``(n, rows, 2)``, from the exact conditional network."""
    c = ROWS[:, None]
    if engine == "pyro":
        torch.manual_seed(seed)
        d = gm.models.Diffusion(TorchConditionalScore(sde), sde=sde, context=torch.tensor(c), **kwargs)
        return d.sample((n,)).numpy()
    import jax
    import jax.numpy as jnp

    net = jax_conditional_score(sde)
    d = gm.models.Diffusion(net, sde=sde, context=jnp.asarray(c, jnp.float32), event_shape=(2,), **kwargs)
    return np.asarray(d.sample(jax.random.PRNGKey(seed), (n,)))


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("w", [0.0, 1.0])
def test_samples_per_row_have_the_conditional_moments(engine: str, w: float) -> None:
    """``w = 0``: the fitted ``N(m c, s^2)`` per row; ``w = 1``: the guided law ``N(2 m c, s^2)`` (module docstring)."""
    sde, n = SDE("vp"), 1000
    x = _samples(engine, sde, n, seed=0, guidance=w)
    assert x.shape == (n, len(ROWS), 2)
    want = (1 + w) * ROWS[:, None] * M
    assert (np.abs(x.mean(0) - want) <= 4 * S / np.sqrt(n) + BIAS).all(), (x.mean(0), want)
    assert (np.abs(x.std(0) - S) <= 4 * S / np.sqrt(2 * n) + BIAS).all(), x.std(0)


@pytest.mark.parametrize("engine", ENGINES)
def test_guidance_zero_is_the_unguided_sampler_and_the_guided_score_is_the_formula(engine: str) -> None:
    sde = SDE("vp")
    for sampler in ("em", "ode"):
        a = _samples(engine, sde, 50, seed=3, sampler=sampler, steps=50)
        b = _samples(engine, sde, 50, seed=3, sampler=sampler, steps=50, guidance=0.0)
        np.testing.assert_array_equal(a, b)
    # the guided score against its closed form, with the zeros null and with a given null row c0:
    # (1 + w) s(x, t, c) - w s(x, t, c0) = -(x - alpha_t m ((1 + w) c - w c0)) / v_t
    w, c0 = 2.0, 0.5
    x, c = draw(np.random.default_rng(4), 6)
    t = np.linspace(0.05, 0.95, 6)
    a_t, _, v = v_t(sde, t)
    for null in (None, c0):
        shift = 0.0 if null is None else w * c0
        want = -(x - a_t[:, None] * ((1 + w) * c - shift) * M) / v[:, None]
        if engine == "pyro":
            kw = {} if null is None else {"null_context": torch.tensor([null], dtype=torch.float64)}
            d = gm.models.Diffusion(TorchConditionalScore(sde), sde=sde, context=torch.tensor(c), guidance=w, **kw)
            got = d.score(torch.tensor(x), torch.tensor(t), guided=True).numpy()
            plain = d.score(torch.tensor(x), torch.tensor(t)).numpy()
        else:
            import jax
            import jax.numpy as jnp

            with jax.enable_x64(True):
                kw = {} if null is None else {"null_context": jnp.asarray([null])}
                net = jax_conditional_score(sde)
                d = gm.models.Diffusion(net, sde=sde, context=jnp.asarray(c), event_shape=(2,), guidance=w, **kw)
                got = np.asarray(d.score(jnp.asarray(x), jnp.asarray(t), guided=True))
                plain = np.asarray(d.score(jnp.asarray(x), jnp.asarray(t)))
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(plain, -(x - a_t[:, None] * c * M) / v[:, None], rtol=1e-10, atol=1e-10)


def test_guided_sampling_counts_two_evaluations_per_step() -> None:
    sde = SDE("vp")
    c = torch.tensor(ROWS[:, None])
    d = gm.models.Diffusion(TorchConditionalScore(sde), sde=sde, context=c, steps=20, guidance=1.0)
    assert d.generate(3)[1]["nfe"] == 40
    d = gm.models.Diffusion(TorchConditionalScore(sde), sde=sde, context=c, steps=20)
    assert d.generate(3)[1]["nfe"] == 20


# ------------------------------------------------------------------ (b) a short fit of a conditional score MLP
MEANS = np.array([[-2.0, 1.0], [2.0, -1.0]])


def two_classes(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    return {"x": (MEANS[y] + 0.4 * rng.normal(size=(n, 2))).astype(np.float32), "y": y}


def conditional_mlp(engine: str, width: int = 32, steps: int = 100):  # noqa: ANN201
    """``x | y ~ Diffusion(ScoreMLP(context_dim=2), context=one_hot(y))``."""
    if engine == "pyro":
        import pyro

        s = gm.models.ScoreMLP(2, width=width, depth=2, context_dim=2)

        def model(x=None, y=None):  # noqa: ANN001, ANN202
            net = pyro.module("score", s)
            with pyro.plate("data", y.shape[0]):
                c = torch.nn.functional.one_hot(y, 2).float()
                pyro.sample("x", gm.models.Diffusion(net, sde="vp", context=c, steps=steps), obs=x)

        return model
    import jax
    import numpyro
    from numpyro.contrib.module import eqx_module

    e = gm.models.ScoreMLP(2, width=width, depth=2, context_dim=2, key=jax.random.PRNGKey(0))

    def model(x=None, y=None):  # noqa: ANN001, ANN202
        net = eqx_module("score", e)
        with numpyro.plate("data", y.shape[0]):
            c = jax.nn.one_hot(y, 2)
            numpyro.sample("x", gm.models.Diffusion(net, sde="vp", context=c, steps=steps), obs=x)

    return model


@pytest.mark.parametrize("engine", ENGINES)
def test_short_conditional_fit_separates_the_classes(engine: str) -> None:
    """200 steps of DSM with classifier-free dropout: samples given each label move towards that class's mean
    (the difference of the per-class sample means points along the true difference, at least half its length);
    the conditional ODE likelihood is finite and higher at the right label than at the wrong one, on average."""
    data = two_classes(512, 0)
    fit = gm.fit(
        conditional_mlp(engine),
        data,
        gm.inference.Score(guidance_dropout=0.1),
        steps=200,
        batch_size=128,
        optim=gm.optim.Adam(3e-3),
        seed=0,
        progress=False,
    )
    labels = np.array([0, 1] * 100)
    s = np.asarray(fit.sample(inputs={"y": labels}, seed=1))
    assert s.shape == (200, 2)
    diff, true = s[labels == 1].mean(0) - s[labels == 0].mean(0), MEANS[1] - MEANS[0]
    assert diff @ true > 0.5 * true @ true, (diff, true)
    test = two_classes(16, 1)
    right = np.asarray(fit.log_prob(test))
    wrong = np.asarray(fit.log_prob({"x": test["x"], "y": 1 - test["y"]}))
    assert right.shape == (16,) and np.isfinite(right).all()
    assert right.mean() > wrong.mean() + 1.0, (right.mean(), wrong.mean())


# ------------------------------------------------------------------ bad input
def test_conditional_diffusion_refuses_bad_input() -> None:
    import pyro

    sde = SDE("vp")
    net = TorchConditionalScore(sde)
    with pytest.raises(gm.ModelError, match="context="):
        gm.models.Diffusion(gm.models.ScoreMLP(2), guidance=1.0)
    with pytest.raises(gm.ModelError, match="one row per example"):
        gm.models.Diffusion(net, context=torch.tensor(1.0))
    d = gm.models.Diffusion(net, sde=sde, context=torch.zeros(3, 1), steps=5)
    with pytest.raises(gm.ModelError, match="3 rows was asked for 4"):
        d.generate(4)
    with pytest.raises(gm.BackendError, match="probability"):
        gm.inference.Score(guidance_dropout=1.0)
    with pytest.raises(gm.BackendError, match="dsm"):
        gm.inference.Score(method="sliced", guidance_dropout=0.1)
    s = gm.models.ScoreMLP(2)

    def unconditional(x=None, y=None):  # noqa: ANN001, ANN202
        module = pyro.module("score", s)
        with pyro.plate("data", y.shape[0]):
            pyro.sample("x", gm.models.Diffusion(module, steps=5), obs=x)

    data = two_classes(16, 0)
    with pytest.raises(gm.BackendError, match="has none"):
        gm.fit(unconditional, data, gm.inference.Score(guidance_dropout=0.1), steps=2, progress=False)


def test_diffusion_of_a_fit_carries_the_context() -> None:
    """The traced site's diffusion holds the context the program computed from the rows (one-hot labels)."""
    data = two_classes(8, 0)
    model = conditional_mlp("pyro")
    program = make_program("pyro", model, observed="x", latent="z", device="cpu", call=make_call(model, "x", ("y",)))
    y = torch.tensor(data["y"])
    d = find_diffusion(program.trace(x=torch.tensor(data["x"]), inputs={"y": y}).nodes["x"]["fn"])
    np.testing.assert_array_equal(d.context.numpy(), np.eye(2)[data["y"]])


@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINES)
def test_conditional_fit_quality(engine: str) -> None:
    """A longer fit (3000 steps) on ``x | y ~ N(MEANS[y], 0.4^2 I)``: per-class sample means within 4 standard
    errors plus ``MODEL_BIAS`` of the class mean, sds within ``MODEL_BIAS`` of 0.4, and the held-out ODE
    ``log p(x | y)`` within ``NATS`` of the true log-density's mean over the same points (a KL-like gap)."""
    model_bias, nats, sd = 0.1, 0.2, 0.4
    fit = gm.fit(
        conditional_mlp(engine, width=64, steps=500),
        two_classes(4000, 0),
        gm.inference.Score(),
        steps=3000,
        batch_size=256,
        optim=gm.optim.Adam(2e-3),
        seed=0,
        progress=False,
    )
    n = 1000
    labels = np.repeat([0, 1], n)
    s = np.asarray(fit.sample(inputs={"y": labels}, seed=1))
    for k in (0, 1):
        xs = s[labels == k]
        assert (np.abs(xs.mean(0) - MEANS[k]) <= 4 * sd / np.sqrt(n) + model_bias).all(), (k, xs.mean(0))
        assert (np.abs(xs.std(0) - sd) <= model_bias).all(), (k, xs.std(0))
    test = two_classes(200, 1)
    lp = np.asarray(fit.log_prob(test), dtype=np.float64)
    truth = iso_logpdf(test["x"].astype(np.float64), MEANS[test["y"]], sd**2)  # paired with the same points
    assert abs(lp.mean() - truth.mean()) <= nats, (lp.mean(), truth.mean())
