"""``gmppl.report.write_report``: the tables equal ``az.summary`` of the tree; the PNGs are real images."""

from __future__ import annotations

import arviz as az
import numpy as np
import pandas as pd

import gmppl as gm
from gmppl.report import write_report

X = np.random.default_rng(0).normal(1.0, 1.0, size=(30, 1)).astype(np.float32)


def test_report_of_a_nuts_fit(tmp_path):
    import pyro
    import pyro.distributions as dist

    def model(x=None, n=None):
        mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
        n = x.shape[0] if x is not None else n
        with pyro.plate("data", n):
            pyro.sample("x", dist.Normal(mu, 1.0).expand([1]).to_event(1), obs=x)

    fit = gm.fit(model, X, gm.inference.NUTS(num_warmup=30, num_samples=40), chains=2, progress=False)
    tree = fit.to_arviz()
    paths = write_report(tree, tmp_path)
    assert set(paths) == {"summary_posterior", "summary_posterior_predictive", "loo", "history", "ppc", "posterior"}
    table = pd.read_csv(tmp_path / "summary_posterior.csv", index_col=0)
    want = az.summary(tree, group="posterior")
    np.testing.assert_allclose(table.loc["mu", "mean"], want.loc["mu", "mean"])
    assert "elpd" in (tmp_path / "loo.md").read_text()
    for name in ("history", "ppc", "posterior"):
        assert paths[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_loo_of_svi_and_point_fits(tmp_path):
    """SVI over the prior's site: loo.md holds az.loo and the guide-corrected LOO; a two-chain point fit's
    loo.md says why PSIS-LOO does not apply (one draw per chain)."""
    import pyro
    import pyro.distributions as dist
    import torch
    from pyro.infer.autoguide import AutoNormal

    def model(x=None, n=None):
        mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
        n = x.shape[0] if x is not None else n
        with pyro.plate("data", n):
            pyro.sample("x", dist.Normal(mu, 1.0).expand([1]).to_event(1), obs=x)

    svi = gm.fit(model, X, gm.inference.ELBO(guide=AutoNormal(model)), steps=20, progress=False)
    svi.guide_draws(100)
    paths = write_report(svi, tmp_path / "svi")
    text = paths["loo"].read_text()
    assert "## az.loo(tree)" in text and "## az.loo_approximate_posterior" in text
    assert text.count("elpd") >= 2 and "failed" not in text

    def point(x=None, n=None):
        mu = pyro.param("mu", torch.tensor(0.0))
        n = x.shape[0] if x is not None else n
        with pyro.plate("data", n):
            pyro.sample("x", dist.Normal(mu, 1.0).expand([1]).to_event(1), obs=x)

    fit = gm.fit(point, X, gm.inference.Likelihood(), steps=5, chains=2, progress=False)
    paths = write_report(fit, tmp_path / "point", x=X)
    text = paths["loo"].read_text()
    assert "not applicable: a point fit holds one draw per chain" in text and "elpd" not in text
