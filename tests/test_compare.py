"""``gm.compare``: held-out ELPD through ``az.compare`` where likelihoods exist, two-sample tables otherwise.

Exact checks: each model's ``elpd`` is ``sum_i log N(x_i | mu, s)`` at its fitted parameters
(float32 log-densities: atol 1e-2 over 60 points) and its ``se`` is ``sqrt(n Var_i)``; the
two-sample columns reproduce ``gm.divergences.MMD``/``Wasserstein1`` on the same samples.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

import gmppl as gm

RNG = np.random.default_rng(0)
X = RNG.normal(0.3, 1.2, size=(300, 1)).astype(np.float32)
X_TEST = RNG.normal(0.3, 1.2, size=(60, 1)).astype(np.float32)


def pyro_gaussian(mu0: float):
    import pyro
    import pyro.distributions as dist
    import torch

    def model(x=None, n=None):
        mu = pyro.param("mu", torch.tensor(mu0))
        s = pyro.param("s", torch.tensor(1.0), constraint=dist.constraints.positive)
        n = x.shape[0] if x is not None else n
        with pyro.plate("data", n):
            pyro.sample("x", dist.Normal(mu, s).expand([1]).to_event(1), obs=x)

    return model


def pyro_implicit():
    import pyro
    import pyro.distributions as dist
    import torch

    def model(x=None, n=None):
        a = pyro.param("a", torch.tensor(1.2))
        n = x.shape[0] if x is not None else n
        with pyro.plate("data", n):
            z = pyro.sample("z", dist.Normal(torch.zeros(1), 1.0).to_event(1))
            pyro.deterministic("x", a * z, event_dim=1)

    return model


def params(fit) -> tuple[float, float]:
    import pyro

    with fit.program.scope():
        return float(pyro.param("mu").detach()), float(pyro.param("s").detach())


@pytest.fixture(scope="module")
def fits():
    kw = dict(batch_size=300, optim=gm.optim.Adam(lr=0.05), progress=False)
    return {
        "good": gm.fit(pyro_gaussian(0.0), X, gm.inference.Likelihood(), steps=200, **kw),
        "poor": gm.fit(pyro_gaussian(3.0), X, gm.inference.Likelihood(), steps=3, **kw),
    }


def test_elpd_table(fits):
    table = gm.compare(fits, X_TEST)
    assert list(table.index) == ["good", "poor"]
    assert {"rank", "elpd", "se", "elpd_diff", "dse", "weight"} <= set(table.columns)
    for name, fit in fits.items():
        lp = stats.norm.logpdf(X_TEST[:, 0], *params(fit))
        assert table.loc[name, "elpd"] == pytest.approx(lp.sum(), abs=1e-2)
        assert table.loc[name, "se"] == pytest.approx(np.sqrt(len(lp) * lp.var()), rel=1e-3)
    assert table.loc["poor", "elpd_diff"] < 0 and table.loc["good", "weight"] > 0.5


def test_two_sample_table(fits):
    from gmppl.divergences import MMD, Wasserstein1

    table = gm.compare(fits, X_TEST, method="two_sample", num_samples=200, seed=4)
    assert list(table.index) == ["good", "poor"]  # the poor fit's mean is ~2.9 sds of the data away
    bw = table.attrs["bandwidth"]
    for name, fit in fits.items():
        y = np.asarray(fit.sample(200, seed=4), dtype=float)
        m = MMD(bandwidth=bw, seed=4)(y, X_TEST.astype(float))
        w = Wasserstein1(seed=4)(y, X_TEST.astype(float))
        assert table.loc[name, "mmd"] == pytest.approx(m.value, rel=1e-9)
        assert table.loc[name, "w1"] == pytest.approx(w.value, rel=1e-9)
        assert table.loc[name, "mmd_lower"] < table.loc[name, "mmd"] < table.loc[name, "mmd_upper"]


def test_implicit_models_get_the_two_sample_table(fits):
    gan = gm.fit(pyro_implicit(), X, gm.inference.Adversarial(), steps=2, batch_size=64, progress=False)
    table = gm.compare({"gan": gan, **fits}, X_TEST, num_samples=100)
    assert {"mmd", "mmd_se", "w1", "w1_se"} <= set(table.columns) and len(table) == 3
    with pytest.raises(gm.NotSupported):
        gm.compare({"gan": gan}, X_TEST, method="elpd")
    with pytest.raises(gm.BackendError):
        gm.compare({}, X_TEST)


def test_bayesian_and_point_fits_together(fits):
    """A NUTS fit's held-out density is the mixture over draws: ``log mean_s N(x | mu_s, 1.2)``."""
    import pyro
    import pyro.distributions as dist

    def model(x=None, n=None):
        mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
        n = x.shape[0] if x is not None else n
        with pyro.plate("data", n):
            pyro.sample("x", dist.Normal(mu, 1.2).expand([1]).to_event(1), obs=x)

    nuts = gm.fit(model, X[:50], gm.inference.NUTS(num_warmup=50, num_samples=50), progress=False)
    table = gm.compare({"nuts": nuts, "good": fits["good"]}, X_TEST)
    mu = nuts.draws[0].values["mu"]
    lp = np.logaddexp.reduce(stats.norm.logpdf(X_TEST[None, :, 0], mu[:, None], 1.2), axis=0) - np.log(len(mu))
    assert table.loc["nuts", "elpd"] == pytest.approx(lp.sum(), abs=1e-2)
