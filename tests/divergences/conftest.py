"""Fixtures for the divergence tests: JAX in float64 for the duration of one test."""

from __future__ import annotations

import pytest


@pytest.fixture
def x64():
    """JAX with 64-bit floats inside the test only (no process-wide config change)."""
    import jax

    with jax.enable_x64(True):
        yield
