"""Engine-neutral site analysis on real Pyro and NumPyro traces: ``check_support``.

Data outside the observed site's support (grey pixels under a Bernoulli) are refused before
training, with the site, the distribution, how many examples and a fix; data inside it pass.
"""

from __future__ import annotations

import numpy as np
import pytest

from gmppl.engines.sites import check_support
from gmppl.errors import DataError

ENGINES = ["pyro", "numpyro"]
GREY = np.random.default_rng(0).uniform(0.05, 0.95, size=(8, 3)).astype(np.float32)  # every row grey
BINARY = (GREY > 0.5).astype(np.float32)
UNIT = np.concatenate([GREY[:6], np.zeros((1, 3)), np.ones((1, 3))]).astype(np.float32)  # [0, 1], ends included


def dist_for(engine: str, family: str, event: bool = True):
    """A distribution over 3-vectors of the given family, batched over 8 examples."""
    if engine == "pyro":
        import pyro.distributions as d
        import torch

        half = 0.5 * torch.ones(8, 3)
        base = {
            "bernoulli": lambda: d.Bernoulli(probs=half),
            "normal": lambda: d.Normal(half, 1.0),
            "unit": lambda: d.ContinuousBernoulli(probs=half),
            "poisson": lambda: d.Poisson(half),
        }[family]()
    else:
        import jax.numpy as jnp
        import numpyro.distributions as d

        half = 0.5 * jnp.ones((8, 3))
        base = {
            "bernoulli": lambda: d.Bernoulli(probs=half),
            "normal": lambda: d.Normal(half, 1.0),
            # NumPyro has no ContinuousBernoulli: a Normal truncated to [0, 1] is a likelihood on the same support
            "unit": lambda: d.TruncatedNormal(half, 0.3, low=0.0, high=1.0),
            "poisson": lambda: d.Poisson(half),
        }[family]()
    return base.to_event(1) if event else base


def sites(engine: str, family: str, data: np.ndarray, *, name: str = "x", event: bool = True, as_numpy=False):
    """The site mapping of a real trace of ``model(x=data)`` with one observed site."""
    if engine == "pyro":
        import pyro
        import pyro.poutine as poutine
        import torch

        def model(x=None, n=None):
            with pyro.plate("data", 8, dim=-1 if event else -2):
                pyro.sample(name, dist_for(engine, family, event), obs=x)

        return poutine.trace(model).get_trace(x=torch.as_tensor(data), n=None).nodes
    import jax.numpy as jnp
    import numpyro
    from numpyro import handlers

    def model(x=None, n=None):
        with numpyro.plate("data", 8, dim=-1 if event else -2):
            numpyro.sample(name, dist_for(engine, family, event), obs=x)

    return handlers.trace(handlers.seed(model, 0)).get_trace(x=data if as_numpy else jnp.asarray(data), n=None)


@pytest.mark.parametrize("engine", ENGINES)
def test_grey_data_under_a_bernoulli_are_refused(engine):
    with pytest.raises(DataError) as info:
        check_support(sites(engine, "bernoulli", GREY), "x", GREY)
    msg = str(info.value)
    assert "'x'" in msg and "Bernoulli" in msg and "8 of the 8 examples" in msg
    assert "binarise" in msg and "ContinuousBernoulli" in msg
    # the site's name is the one given, and only the examples outside the support are counted
    mixed = np.concatenate([GREY[:3], BINARY[3:]])
    with pytest.raises(DataError, match=r"3 of the 8 examples .* site 'obs'"):
        check_support(sites(engine, "bernoulli", mixed, name="obs"), "obs", mixed)


@pytest.mark.parametrize("engine", ENGINES)
def test_data_inside_the_support_pass(engine):
    check_support(sites(engine, "bernoulli", BINARY), "x", BINARY)
    check_support(sites(engine, "normal", GREY), "x", GREY)
    check_support(sites(engine, "unit", UNIT), "x", UNIT)
    above = UNIT + 0.5  # the check ran (not skipped): out of [0, 1] is refused
    with pytest.raises(DataError, match="Rescale the data"):
        check_support(sites(engine, "unit", above), "x", above)


@pytest.mark.parametrize("engine", ENGINES)
def test_support_without_to_event_is_counted_per_example(engine):
    """Without ``to_event`` the check is elementwise, ``(8, 3)``: an example is out if any element is."""
    mixed = np.concatenate([GREY[:2], BINARY[2:]])
    with pytest.raises(DataError, match="2 of the 8 examples"):
        check_support(sites(engine, "bernoulli", mixed, event=False), "x", mixed)
    check_support(sites(engine, "bernoulli", BINARY, event=False), "x", BINARY)


@pytest.mark.parametrize("engine", ENGINES)
def test_counts_that_are_not_whole_numbers(engine):
    with pytest.raises(DataError, match="whole numbers"):
        check_support(sites(engine, "poisson", GREY), "x", GREY)
    counts = np.round(4 * GREY)
    check_support(sites(engine, "poisson", counts), "x", counts)


def test_numpyro_site_holding_numpy_data():
    """NumPyro keeps ``obs`` as given: a numpy value is checked as a JAX array all the same."""
    s = sites("numpyro", "bernoulli", GREY, as_numpy=True)
    assert type(s["x"]["value"]).__module__.split(".")[0] == "numpy"
    with pytest.raises(DataError, match="8 of the 8"):
        check_support(s, "x", GREY)


def test_nothing_to_check_is_let_through():
    """No such site, an implicit (deterministic) observed site, a distribution without a declared support."""
    import jax.numpy as jnp
    import numpyro
    import pyro
    import pyro.distributions as pd
    import pyro.poutine as poutine
    import torch
    from numpyro import handlers

    check_support(sites("pyro", "bernoulli", GREY), "y", GREY)

    def implicit(x=None, n=None):
        numpyro.deterministic("x", jnp.zeros((8, 3)))

    check_support(handlers.trace(implicit).get_trace(), "x", GREY)

    class NoSupport(pd.TorchDistribution):
        arg_constraints = {}

        def __init__(self):
            super().__init__(torch.Size([8]), torch.Size([3]), validate_args=False)

        def log_prob(self, value):
            return torch.zeros(value.shape[:-1])

    def model(x=None, n=None):
        with pyro.plate("data", 8):
            pyro.sample("x", NoSupport(), obs=x)

    nodes = poutine.trace(model).get_trace(x=torch.as_tensor(GREY)).nodes
    with pytest.raises(NotImplementedError):
        _ = nodes["x"]["fn"].support
    check_support(nodes, "x", GREY)
