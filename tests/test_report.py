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
