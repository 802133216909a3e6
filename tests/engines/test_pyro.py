"""The Pyro engine's traced graphs (``compiled_generate``, ``compiled_log_prob``): the same values and gradients
as Pyro's handlers, random draws included; refused where they would differ; a graph that fails on a later call
hands over to the handlers."""

from __future__ import annotations

import numpy as np
import pytest

import gmppl as gm
from gmppl.models import zoo

torch = pytest.importorskip("torch")
pyro = pytest.importorskip("pyro")
dist = pytest.importorskip("pyro.distributions")


def program_of(model):
    from gmppl.engines.pyro import PyroProgram

    p = PyroProgram(model, observed="x", latent="z", device=torch.device("cpu"))
    p.inspect(np.zeros((4, 2), np.float32))
    return p


def mlp_generator(x=None, n=None):
    net = mlp_generator.net
    g = pyro.module("g", net)
    with pyro.plate("data", n if x is None else x.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        pyro.deterministic("x", g(z), event_dim=1)


mlp_generator.net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))


def test_the_traced_generator_draws_what_the_handlers_draw_and_trains_the_same_parameters() -> None:
    from gmppl.engines.pyro import compiled_generate

    program = program_of(mlp_generator)
    with program.scope():
        run = compiled_generate(program, 16)
        assert run is not None
        torch.manual_seed(5)
        a = run()
        torch.manual_seed(5)
        b = program.generate(16, grad=True)
        assert torch.equal(a, b)
        a.sum().backward()
        grads = [p.grad.clone() for p in mlp_generator.net.parameters()]
        for p in mlp_generator.net.parameters():
            p.grad = None
        b.sum().backward()
        for g, p in zip(grads, mlp_generator.net.parameters(), strict=True):
            assert torch.equal(g, p.grad)


def test_a_generator_whose_structure_depends_on_its_draws_keeps_the_handlers() -> None:
    from gmppl.engines.pyro import compiled_generate

    lin = torch.nn.Linear(2, 2)

    def branching(x=None, n=None):
        g = pyro.module("g", lin)
        with pyro.plate("data", n if x is None else x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            out = g(z) if float(z[0, 0]) > 0 else -g(z)  # a Python branch on a draw: the trace bakes one in
            pyro.deterministic("x", out, event_dim=1)

    program = program_of(branching)
    with program.scope():
        assert compiled_generate(program, 16) is None


def test_a_graph_that_fails_on_a_later_draw_hands_over_to_the_handlers(monkeypatch) -> None:
    from gmppl.engines import pyro as engine

    program = program_of(mlp_generator)
    with program.scope():
        run = engine.compiled_generate(program, 16)
        assert run is not None
        calls = []

        def failing(*args):
            calls.append(1)
            raise RuntimeError("shape '[]' is invalid for input of size 0")

        monkeypatch.setattr(torch.jit, "optimized_execution", failing)  # the graph's run raises
        torch.manual_seed(3)
        a = run()
        torch.manual_seed(3)
        assert torch.equal(a, program.generate(16, grad=True))
        run()
        assert len(calls) == 1  # not retried


def test_an_adversarial_fit_of_a_flow_runs_through_the_handlers(monkeypatch) -> None:
    """A spline flow's draws past its tails change the shapes inside the transform: a flow is never traced,
    while an implicit generator is (the tracer is asked once per batch size)."""
    from gmppl.engines import pyro as engine

    asked = []
    traced = engine.compiled_generate
    monkeypatch.setattr(engine, "compiled_generate", lambda program, n: asked.append(n) or traced(program, n))
    x = gm.datasets.moons(256, seed=0)
    gm.fit(
        zoo.gan(2, latent_dim=2, engine="pyro"),
        x,
        gm.inference.Adversarial("js"),
        steps=3,
        batch_size=64,
        progress=False,
    )
    assert asked == [64]
    asked.clear()
    fit = gm.fit(
        zoo.flow(2, engine="pyro", layers=2),
        x,
        gm.inference.Adversarial("js"),
        steps=30,
        batch_size=64,
        progress=False,
    )
    assert np.isfinite(fit.history["loss"]).all()
    assert asked == []


def test_the_traced_log_density_is_the_handlers_on_any_batch_and_trains_the_same_parameters() -> None:
    """A spline flow's log-density as a graph: exactly the handlers' values and gradients, on the batch traced, on
    another one, and on points far past the splines' tails (where the transform is the identity)."""
    from gmppl.engines.pyro import compiled_log_prob

    program = program_of(zoo.flow(2, engine="pyro", layers=2, hidden=(16,)))
    x = torch.as_tensor(gm.datasets.moons(64, seed=0), dtype=torch.float32)
    with program.scope():
        run = compiled_log_prob(program, x)
        assert run is not None
        params = list(program.params().values())
        for batch in (x, torch.randn(64, 2), 10 * torch.randn(64, 2)):
            a, b = run(batch), program.log_prob(batch)
            assert torch.equal(a, b)
            for g, h in zip(torch.autograd.grad(a.sum(), params), torch.autograd.grad(b.sum(), params), strict=True):
                assert torch.equal(g, h)


def test_a_log_density_that_branches_on_its_data_keeps_the_handlers() -> None:
    from gmppl.engines.pyro import compiled_log_prob

    def branching(x=None, n=None):
        loc = pyro.param("loc", torch.zeros(2))
        with pyro.plate("data", n if x is None else x.shape[0]):
            scale = 2.0 if x is not None and float(x[0, 0]) > 0 else 1.0  # a Python branch on the data
            pyro.sample("x", dist.Normal(loc, scale).to_event(1), obs=x)

    program = program_of(branching)
    with program.scope():
        assert compiled_log_prob(program, torch.randn(16, 2)) is None
