"""Site roles for drawing from a fitted guide (``gmppl.inference.draws``): found on abstract values on JAX, the same as
an eager run's, and by an eager run where the program reads a value in Python."""

from __future__ import annotations

import numpy as np
import pytest

import gmppl as gm
from gmppl.engines.numpyro import NumPyroProgram
from gmppl.inference.draws import _jax_site_roles, _latent_names, local_sites

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")
numpyro = pytest.importorskip("numpyro")
dist = pytest.importorskip("numpyro.distributions")


def global_and_local(x=None, n=None):
    w = numpyro.sample("w", dist.Normal(0.0, 1.0))
    with numpyro.plate("data", x.shape[0] if x is not None else n):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        numpyro.sample("x", dist.Normal((w + z)[:, None] * jnp.ones(2), 0.1).to_event(1), obs=x)


def reads_a_value(x=None, n=None):
    w = numpyro.sample("w", dist.Normal(0.0, 1.0))
    scale = 0.1 if x is None or float(x.sum()) > 0 else 0.2  # a value read in Python: no abstract run
    with numpyro.plate("data", x.shape[0] if x is not None else n):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        numpyro.sample("x", dist.Normal((w + z)[:, None] * jnp.ones(2), scale).to_event(1), obs=x)


@pytest.mark.parametrize("model", [global_and_local, reads_a_value])
def test_site_roles_are_the_eager_runs(model) -> None:
    x = np.random.default_rng(0).normal(size=(16, 2)).astype(np.float32)
    program = NumPyroProgram(model)
    program.inspect(x)
    roles = _jax_site_roles(program, x, {})
    eager = program.trace(program.params, jax.random.PRNGKey(0), x=program.as_array(x))
    assert list(roles) == list(eager)
    for k, site in eager.items():
        assert roles[k]["type"] == site["type"] and roles[k]["is_observed"] == site.get("is_observed", False)
        assert roles[k]["cond_indep_stack"] == site.get("cond_indep_stack", ())
    assert _latent_names(roles) == ["w", "z"] and local_sites(roles, 16, "x") == {"z"}


def test_a_fitted_guide_over_a_global_site_makes_draws() -> None:
    from numpyro.infer.autoguide import AutoNormal

    def model(x=None, n=None):
        mu = numpyro.sample("mu", dist.Normal(0.0, 10.0))
        with numpyro.plate("data", x.shape[0] if x is not None else n):
            numpyro.sample("x", dist.Normal(mu * jnp.ones(1), 1.0).to_event(1), obs=x)

    x = np.random.default_rng(0).normal(1.0, 1.0, size=(40, 1)).astype(np.float32)
    fit = gm.fit(model, x, gm.inference.ELBO(guide=AutoNormal(model)), steps=300, optim=0.05, progress=False)
    assert fit.draws is not None and np.asarray(fit.draws[0].values["mu"]).shape[0] > 1
