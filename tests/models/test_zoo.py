"""The model zoo: every builder on both engines generates the right shapes and offers what it should."""

from __future__ import annotations

import numpy as np
import pytest

import gmppl as gm
from gmppl.models import zoo

ENGINES = ["pyro", "numpyro"]


def info(model, x):
    from gmppl.engines import detect_engine, make_program

    engine = detect_engine(model, x[:4])
    return engine, make_program(engine, model, observed="x", latent="z", device="cpu").inspect(x[:4])


@pytest.mark.parametrize("engine", ENGINES)
def test_capabilities_by_model_class(engine):
    x = gm.datasets.moons(16)
    cases = {
        "gan": (zoo.gan(2, engine=engine), {"reparameterized_sample", "latent"}, {"density"}),
        "vae": (zoo.vae(2, engine=engine), {"observation_model", "latent"}, {"density"}),
        "ppca": (zoo.ppca(2, 1, engine=engine), {"density"}, {"latent"}),
        "ppca_latent": (zoo.ppca(2, 1, engine=engine, marginal=False), {"observation_model"}, {"density"}),
        "flow": (zoo.flow(2, engine=engine, layers=2), {"density", "reparameterized_sample"}, {"latent"}),
        "diffusion": (zoo.diffusion(2, engine=engine, width=16, depth=1), {"score_network"}, {"latent"}),
        "continuous_flow": (zoo.continuous_flow(2, engine=engine, width=16, depth=1), {"velocity_field"}, {"latent"}),
    }
    for name, (model, has, lacks) in cases.items():
        got_engine, mi = info(model, x)
        assert got_engine == engine, name
        assert has <= mi.capabilities, (name, mi.capabilities)
        assert not (lacks & mi.capabilities), (name, mi.capabilities)
        assert mi.x_event_shape == (2,), name


def test_unknown_options_are_refused():
    with pytest.raises(gm.UnknownName):
        zoo.gan(2, engine="stan")
    with pytest.raises(gm.UnknownName):
        zoo.vae(2, likelihood="poisson")
    with pytest.raises(gm.UnknownName):
        zoo.flow(2, kind="glow")


@pytest.mark.parametrize("engine", ENGINES)
def test_ppca_marginal_and_latent_forms_agree(engine):
    """Both PPCA forms at their initial parameters generate N(mu, W W^T + s^2 I), computed exactly."""

    from gmppl.engines import make_program

    x = gm.datasets.moons(16)
    w0 = 0.1 + 0.01 * np.arange(2.0).reshape(2, 1)  # the builder's documented initial W; mu = 0, s = 1
    exact = w0 @ w0.T + np.eye(2)
    n = 20000
    for marginal in (True, False):
        program = make_program(
            engine, zoo.ppca(2, 1, engine=engine, marginal=marginal), observed="x", latent="z", device="cpu"
        )
        program.inspect(x[:4])
        draws = program.sample(n, seed=1)
        draws = np.asarray(draws, dtype=float)
        # covariance entries: standard error <= sqrt((s_ii s_jj + s_ij^2) / n) ~ 0.011; 5 standard errors
        np.testing.assert_allclose(np.cov(draws.T), exact, atol=5 * np.sqrt(2.05 / n))
        np.testing.assert_allclose(draws.mean(0), 0.0, atol=5 * np.sqrt(1.03 / n))
