"""Contract test over every flow on every engine, after zuko's ``tests/test_flows.py`` (docs/design.md, "Practices").

For each flow: shapes; ``f^{-1}(f(z)) = z``; the log-determinant against the autodiff Jacobian;
``Pushforward(base, f).log_prob`` against the change of variables with the autodiff Jacobian of
``f^{-1}``; gradients reach every parameter; ``gm.fit -> save -> gm.load`` into a freshly built
flow gives the same ``log_prob``. Maths checks run in float64, where the only error is rounding:
``ATOL = 1e-8`` (a 2-layer flow's inverse and log-det are exact up to ~1e-13 there; the spline's
inverse solves a quadratic, which loses a few digits near flat bins).
Also: the JAX coupling layers equal Pyro's (the same maths on both engines) given the same weights.
"""

from __future__ import annotations

import numpy as np
import pytest

import gmppl as gm
from gmppl.models import flows

ATOL = 1e-8  # float64 maths checks
LOAD_ATOL = 1e-6  # float32 log-probs, same weights, same program: equal up to rounding
DIM, LAYERS, HIDDEN = 3, 2, (16, 16)

CASES = [("pyro", name) for name in flows.available("pyro")] + [
    ("numpyro", name) for name in flows.available("numpyro")
]


def _points(n: int = 7) -> np.ndarray:
    """Base points, two of them outside the spline's [-3, 3] box (the identity tails)."""
    z = np.random.default_rng(1).normal(size=(n, DIM))
    z[0, :] = [3.5, -0.2, 4.0]
    z[1, :] = [-0.3, -3.7, 0.1]
    return z


def _build(engine: str, name: str, key: int = 0):
    return (
        flows.FLOWS[name](DIM, engine=engine, layers=LAYERS, hidden=HIDDEN, bins=6, key=key)
        if "spline" in name
        else (flows.FLOWS[name](DIM, engine=engine, layers=LAYERS, hidden=HIDDEN, key=key))
    )


# ---------------------------------------------------------------------- torch side
@pytest.fixture
def float64_default():
    """Pyro's autoregressive inverse allocates in the default dtype, so maths checks set it to float64."""
    import torch

    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _torch_checks(name: str) -> None:
    import pyro.distributions as dist
    import torch

    torch.manual_seed(0)
    f = _build("pyro", name).double()
    z = torch.as_tensor(_points(), dtype=torch.float64)

    x = f(z)
    assert x.shape == z.shape
    assert f(z.reshape(1, 7, DIM)).shape == (1, 7, DIM)
    back = f.inv(x.clone())  # a clone defeats the transforms' (x, y) cache
    torch.testing.assert_close(back, z, atol=ATOL, rtol=0)

    ld = f.log_abs_det_jacobian(z, x)
    assert ld.shape == (7,)
    for i in range(len(z)):
        jac = torch.autograd.functional.jacobian(lambda v: f(v[None])[0], z[i])
        torch.testing.assert_close(ld[i], torch.linalg.slogdet(jac)[1], atol=ATOL, rtol=0)

    base = dist.Normal(torch.zeros(DIM, dtype=torch.float64), 1.0).to_event(1)
    push = gm.models.Pushforward(base, f)
    xs = x.detach().clone()
    lp = push.log_prob(xs)
    for i in range(len(xs)):
        jac_inv = torch.autograd.functional.jacobian(lambda v: f.inv(v[None].clone())[0], xs[i])
        want = base.log_prob(f.inv(xs[i : i + 1].clone()))[0] + torch.linalg.slogdet(jac_inv)[1]
        torch.testing.assert_close(lp[i], want, atol=ATOL, rtol=0)

    params = dict(f.named_parameters())
    assert params
    for p in params.values():
        p.grad = None
    (-push.log_prob(xs)).sum().backward()
    dead = [k for k, p in params.items() if p.grad is None or not torch.any(p.grad != 0)]
    assert not dead, f"no gradient reaches {dead}"


# ---------------------------------------------------------------------- JAX side
def _jax_checks(name: str) -> None:
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import numpyro.distributions as ndist

    with jax.enable_x64(True):
        f = _build("numpyro", name)
        z = jnp.asarray(_points())
        params, static = eqx.partition(f, eqx.is_inexact_array)
        assert all(leaf.dtype == jnp.float64 for leaf in jax.tree.leaves(params))
        base = ndist.Normal(jnp.zeros(DIM), 1.0).to_event(1)

        def nll(p, x):
            return -gm.models.Pushforward(base, eqx.combine(p, static)).log_prob(x).sum()

        @jax.jit  # one compilation for every quantity (eager spline maths is slow to dispatch)
        def quantities(p, z):
            f = eqx.combine(p, static)
            x, ld = f.forward_and_log_det(z)
            jac_inv = jax.vmap(jax.jacfwd(f.inverse))(x)
            return {
                "x": x,
                "ld": ld,
                "batched": f(z.reshape(1, *z.shape)),
                "back": f.inverse(x),
                "ld_autodiff": jnp.linalg.slogdet(jax.vmap(jax.jacfwd(f))(z))[1],
                "ld_transform": f.gmppl_transform().log_abs_det_jacobian(z, x),
                "lp": gm.models.Pushforward(base, f).log_prob(x),
                "lp_autodiff": base.log_prob(f.inverse(x)) + jnp.linalg.slogdet(jac_inv)[1],
                "grads": jax.grad(nll)(p, x),
            }

        q = quantities(params, z)
        assert q["x"].shape == z.shape and q["ld"].shape == (7,) and q["batched"].shape == (1, 7, DIM)
        np.testing.assert_allclose(q["back"], z, atol=ATOL, rtol=0)
        np.testing.assert_allclose(q["ld"], q["ld_autodiff"], atol=ATOL, rtol=0)
        np.testing.assert_allclose(q["ld_transform"], q["ld"], atol=ATOL, rtol=0)
        np.testing.assert_allclose(q["lp"], q["lp_autodiff"], atol=ATOL, rtol=0)
        leaves = jax.tree_util.tree_leaves_with_path(q["grads"])
        assert len(leaves) == len(jax.tree.leaves(params))
        dead = [jax.tree_util.keystr(k) for k, g in leaves if not bool(jnp.any(g != 0))]
        assert not dead, f"no gradient reaches {dead}"


@pytest.mark.parametrize(("engine", "name"), CASES, ids=[f"{e}-{n}" for e, n in CASES])
def test_flow_contract(engine: str, name: str, float64_default) -> None:
    (_torch_checks if engine == "pyro" else _jax_checks)(name)


# ---------------------------------------------------------------------- through gm.fit
def _model(engine: str, f):
    if engine == "pyro":
        import pyro
        import pyro.distributions as dist
        import torch

        def model(x=None, n=None):
            pyro.module("flow", f)
            base = dist.Normal(torch.zeros(DIM), 1.0).to_event(1)
            with pyro.plate("data", x.shape[0] if x is not None else n):
                pyro.sample("x", gm.models.Pushforward(base, f), obs=x)

        return model
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as ndist
    from numpyro.contrib.module import eqx_module

    def model(x=None, n=None):
        g = eqx_module("flow", f)
        base = ndist.Normal(jnp.zeros(DIM), 1.0).to_event(1)
        with numpyro.plate("data", x.shape[0] if x is not None else n):
            numpyro.sample("x", gm.models.Pushforward(base, g), obs=x)

    return model


def _weights(engine: str, flow, fit=None) -> np.ndarray:
    """All weights of a flow as one vector (for NumPyro, the fitted values live in ``fit.program.params``)."""
    if engine == "pyro":
        import torch

        return torch.nn.utils.parameters_to_vector(flow.parameters()).detach().numpy()
    import equinox as eqx
    from jax.flatten_util import ravel_pytree

    tree = fit.program.params["flow$params"] if fit is not None else eqx.filter(flow, eqx.is_inexact_array)
    return np.asarray(ravel_pytree(tree)[0])


@pytest.mark.parametrize(("engine", "name"), CASES, ids=[f"{e}-{n}" for e, n in CASES])
def test_flow_fit_save_load(engine: str, name: str, tmp_path) -> None:
    """A fitted flow saved and loaded into a *newly built* flow (other initial weights) has the same log_prob."""
    import torch

    rng = np.random.default_rng(0)
    x = (rng.normal(size=(200, DIM)) @ np.diag([1.0, 0.5, 2.0]) + 1.0).astype(np.float32)
    torch.manual_seed(0)
    f = _build(engine, name)
    fit = gm.fit(_model(engine, f), x[:150], gm.inference.Likelihood(), steps=5, batch_size=64, progress=False)
    assert np.isfinite(fit.history["loss"]).all()
    fit.save(tmp_path / "fit")
    torch.manual_seed(1)
    g = _build(engine, name, key=1)
    assert not np.allclose(_weights(engine, g), _weights(engine, f, fit))  # g really starts elsewhere
    loaded = gm.load(tmp_path / "fit", _model(engine, g))
    a, b = np.asarray(fit.log_prob(x[150:])), np.asarray(loaded.log_prob(x[150:]))
    np.testing.assert_allclose(b, a, atol=LOAD_ATOL, rtol=0)


# ---------------------------------------------------------------------- same maths on both engines
@pytest.mark.parametrize("name", ["spline_coupling", "affine_coupling"])
def test_jax_coupling_equals_pyro(name: str) -> None:
    """Given Pyro's weights, the JAX flow computes Pyro's ``f``, ``f^{-1}`` and log-dets (float64)."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import torch

    torch.manual_seed(0)
    tf = _build("pyro", name).double()
    z = _points()
    with jax.enable_x64(True):
        jf = _build("numpyro", name)
        nets = [p.nn if hasattr(p, "nn") else p.upper_spline.nn for p in tf.parts if isinstance(p, torch.nn.Module)]
        assert len(nets) == LAYERS == len(jf.layers)
        for i, net in enumerate(nets):
            for j, lin in enumerate(net.layers):
                jf = eqx.tree_at(
                    lambda m, i=i, j=j: (m.layers[i].net.layers[j].weight, m.layers[i].net.layers[j].bias),
                    jf,
                    (jnp.asarray(lin.weight.detach().numpy()), jnp.asarray(lin.bias.detach().numpy())),
                )
        zt = torch.as_tensor(z)
        xt = tf(zt)
        x, ld = jf.forward_and_log_det(jnp.asarray(z))
        np.testing.assert_allclose(x, xt.detach().numpy(), atol=ATOL, rtol=0)
        np.testing.assert_allclose(ld, tf.log_abs_det_jacobian(zt, xt).detach().numpy(), atol=ATOL, rtol=0)
        xs = xt.detach().clone()
        back, ldi = jf.inverse_and_log_det(jnp.asarray(xs.numpy()))
        np.testing.assert_allclose(back, tf.inv(xs).detach().numpy(), atol=ATOL, rtol=0)
        np.testing.assert_allclose(ldi, -ld, atol=ATOL, rtol=0)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="dim"):
        flows.spline_coupling(1)
    with pytest.raises(gm.UnknownName):
        flows.affine_coupling(2, engine="tf")
    with pytest.raises(gm.NotSupported, match="pyro"):
        flows.affine_autoregressive(2, engine="numpyro")
