"""``AmortizedNormal``: the guide programs it builds on each engine — sites, shapes, parameters, errors."""

from __future__ import annotations

import numpy as np
import pytest

import gmppl as gm
from gmppl.models.guides import LatentSite

SITE = LatentSite(name="z", shape=(3,), x_shape=(2, 4), plate="data", dim=-1)
X = np.random.default_rng(0).normal(size=(5, 2, 4)).astype(np.float32)


def run_pyro(guide):
    import pyro
    import pyro.poutine as poutine
    import torch

    with pyro.get_param_store().scope():
        tr = poutine.trace(guide).get_trace(torch.as_tensor(X))
        params = {k: tuple(v.shape) for k, v in pyro.get_param_store().items()}
    return tr.nodes["z"], params


def run_numpyro(guide):
    import jax.numpy as jnp
    from numpyro import handlers

    tr = handlers.trace(handlers.seed(guide, 0)).get_trace(jnp.asarray(X))
    return tr["z"], {k: s["value"] for k, s in tr.items() if s["type"] == "param"}


@pytest.mark.parametrize("engine", ["pyro", "numpyro"])
def test_guide_samples_the_latent_in_the_data_plate(engine):
    guide = gm.models.AmortizedNormal(hidden=(16,)).build(engine, SITE, seed=0)
    site, params = (run_pyro if engine == "pyro" else run_numpyro)(guide)
    assert tuple(site["value"].shape) == (5, 3)
    assert tuple(site["fn"].event_shape) == (3,) and tuple(site["fn"].batch_shape) == (5,)
    assert [f.name for f in site["cond_indep_stack"]] == ["data"]
    scale = site["fn"].base_dist.scale
    assert np.all(np.asarray(scale.detach() if hasattr(scale, "detach") else scale) > 0)
    assert any(k.startswith("guide") for k in params)


def test_linear_encoder_and_seeded_init():
    import torch

    guide = gm.models.AmortizedNormal(hidden=()).build("pyro", SITE, seed=3)
    _, params = run_pyro(guide)
    assert sorted(params.values()) == [(6,), (6, 8)]  # one Linear: 2*4 inputs -> 2*3 outputs
    a, _ = run_pyro(gm.models.AmortizedNormal(hidden=()).build("pyro", SITE, seed=3))
    b, _ = run_pyro(gm.models.AmortizedNormal(hidden=()).build("pyro", SITE, seed=3))
    assert torch.equal(a["fn"].base_dist.loc, b["fn"].base_dist.loc)


def test_user_encoder_and_wrong_encoders():
    import torch

    enc = torch.nn.Linear(8, 6)
    guide = gm.models.AmortizedNormal(encoder=enc).build("pyro", SITE, seed=0)
    site, _ = run_pyro(guide)
    with torch.no_grad():
        h = enc(torch.as_tensor(X).reshape(5, 8))
    torch.testing.assert_close(site["fn"].base_dist.loc, h[:, :3])
    with pytest.raises(gm.BackendError, match="Equinox"):
        gm.models.AmortizedNormal(encoder=enc).build("numpyro", SITE, seed=0)
    with pytest.raises(gm.BackendError, match="torch.nn.Module"):
        gm.models.AmortizedNormal(encoder=lambda x: x).build("pyro", SITE, seed=0)
    with pytest.raises(gm.BackendError, match="equal hidden widths"):
        gm.models.AmortizedNormal(hidden=(16, 8)).build("pyro", SITE, seed=0)
