"""Shared fixtures: seeds, a clean Pyro param store per test, ``--device`` to run the suite on a GPU."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# JAX's persistent compilation cache (gmppl.engines.jax_cache) goes to a directory of this session, never
# the user's ~/.cache; subprocesses started by tests inherit it.
os.environ["GMPPL_JAX_CACHE"] = tempfile.mkdtemp(prefix="gmppl-test-jax-cache-")
os.environ.setdefault("CI", os.environ.get("CI", ""))

import numpy as np
import pytest

atexit.register(shutil.rmtree, os.environ["GMPPL_JAX_CACHE"], ignore_errors=True)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--device", default="cpu", help="device for fits: cpu, cuda, cuda:1")


@pytest.fixture
def device(request: pytest.FixtureRequest) -> str:
    return request.config.getoption("--device")


@pytest.fixture(autouse=True)
def _clean_state() -> None:
    import pyro
    import torch

    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    torch.set_num_threads(1)


@pytest.fixture
def moons() -> np.ndarray:
    from sklearn.datasets import make_moons

    return make_moons(1000, noise=0.05, random_state=0)[0].astype(np.float32)
