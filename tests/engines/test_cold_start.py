"""Cold start: ``import gmppl`` stays light, JAX's persistent cache follows ``GMPPL_JAX_CACHE``, and a NumPyro
fit neither imports torch nor loses the refusal of programs that mix Pyro and NumPyro. Each check runs in a
fresh interpreter, since what a process has imported is the thing tested."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gmppl.engines import jax_cache

ROOT = Path(__file__).resolve().parents[2]

GAUSS = """
import jax.numpy as jnp, numpy as np, numpyro, numpyro.distributions as dist
from numpyro.distributions import constraints
import gmppl as gm

def model(x=None, n=None):
    loc = numpyro.param("loc", jnp.zeros(()))
    scale = numpyro.param("scale", jnp.ones(()), constraint=constraints.positive)
    with numpyro.plate("data", x.shape[0] if x is not None else n):
        numpyro.sample("x", dist.Normal(loc, scale), obs=x)

x = np.random.default_rng(0).normal(1.0, 2.0, size=64).astype(np.float32)
"""


def _run(code: str, **env: str) -> dict:
    """Run ``code`` in a fresh interpreter; it prints one JSON line, returned parsed."""
    full = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu", **env}
    for k, v in env.items():
        if v == "<unset>":
            full.pop(k)
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=full, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_gmppl_does_not_import_heavy_libraries():
    loaded = _run(
        """
        import json, sys
        import gmppl as gm
        heavy = ["scipy", "torch", "pyro", "jax", "numpyro", "sklearn", "matplotlib", "arviz", "xarray", "pandas"]
        print(json.dumps({m: m in sys.modules for m in heavy}))
        """
    )
    assert not any(loaded.values()), loaded


def test_public_names_still_resolve():
    names = _run(
        """
        import json
        import gmppl as gm
        ok = [callable(gm.fit), callable(gm.load), callable(gm.compare), callable(gm.divergences.optimise_critic),
              issubclass(gm.ModelError, gm.GmpplError), gm.inference.Likelihood is not None,
              gm.models.Pushforward is not None, callable(gm.datasets.moons), gm.metrics is not None,
              gm.optim is not None, gm.uq is not None]
        fit = gm.divergences.optimise_critic("kl", [0.7, 0.3], [0.4, 0.6])
        print(json.dumps({"ok": ok, "kl": fit.value}))
        """
    )
    assert all(names["ok"])
    assert names["kl"] == pytest.approx(0.1837869, abs=1e-6)


def test_cache_dir_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv(jax_cache.ENV, raising=False)
    assert jax_cache.cache_dir_from_env() == tmp_path / "gmppl" / "jax"
    for off in ("0", "off", "OFF", "false", "none"):
        monkeypatch.setenv(jax_cache.ENV, off)
        assert jax_cache.cache_dir_from_env() is None
    monkeypatch.setenv(jax_cache.ENV, str(tmp_path / "c"))
    assert jax_cache.cache_dir_from_env() == tmp_path / "c"


CACHE_PROBE = (
    GAUSS
    + """
import json, sys, jax
fit = gm.fit(model, x, gm.inference.Likelihood(), steps=4, batch_size=32, progress=False)
print(json.dumps({"dir": jax.config.jax_compilation_cache_dir,
                  "min_time": jax.config.jax_persistent_cache_min_compile_time_secs,
                  "torch": "torch" in sys.modules, "pyro": "pyro" in sys.modules}))
"""
)


def test_numpyro_fit_uses_the_cache_in_gmppl_jax_cache_and_skips_torch(tmp_path):
    cache = tmp_path / "jax-cache"
    seen = _run(CACHE_PROBE, GMPPL_JAX_CACHE=str(cache))
    assert seen["dir"] == str(cache) and seen["min_time"] == 0.0
    assert any(cache.iterdir()), "no executable was written to the cache"
    assert not seen["torch"] and not seen["pyro"], "a NumPyro fit imported torch/Pyro"


def test_cache_off_and_users_own_jax_cache_dir_are_respected(tmp_path):
    off = _run(CACHE_PROBE, GMPPL_JAX_CACHE="off")
    assert off["dir"] is None
    mine = tmp_path / "mine"
    theirs = _run(CACHE_PROBE, GMPPL_JAX_CACHE=str(tmp_path / "gmppl"), JAX_COMPILATION_CACHE_DIR=str(mine))
    assert theirs["dir"] == str(mine) and theirs["min_time"] == 1.0  # JAX's own settings, untouched
    assert not (tmp_path / "gmppl").exists()


def test_mixing_refused_when_the_program_imports_pyro_itself():
    """Pyro not imported before the fit: detection tries NumPyro alone first, and must still see the Pyro calls."""
    seen = _run(
        GAUSS
        + """
import json, sys
assert "pyro" not in sys.modules

def mixed(x=None, n=None):
    import pyro, torch
    mu = pyro.param("mu", torch.zeros(()))
    with numpyro.plate("data", x.shape[0] if x is not None else n):
        numpyro.sample("x", dist.Normal(float(mu), 1.0), obs=x)

try:
    gm.fit(mixed, x, gm.inference.Likelihood(), steps=2, progress=False)
    print(json.dumps({"refused": False}))
except gm.ModelError as e:
    print(json.dumps({"refused": "mixes Pyro and NumPyro" in str(e)}))
"""
    )
    assert seen["refused"]


PYRO_GAUSS = """
import json, sys
import numpy as np, pyro, pyro.distributions as dist, torch
from torch.distributions import constraints
import gmppl as gm

x = np.random.default_rng(0).normal(1.0, 2.0, size=64).astype(np.float32)

def model(x=None, n=None):
    loc = pyro.param("loc", torch.zeros(()))
    scale = pyro.param("scale", torch.ones(()), constraint=constraints.positive)
    with pyro.plate("data", x.shape[0] if x is not None else n):
        pyro.sample("x", dist.Normal(loc, scale), obs=x)
"""


def test_pyro_fit_does_not_import_jax_and_mixing_is_still_refused():
    """NumPyro not imported: detection runs the program under Pyro alone, unless it imports NumPyro itself."""
    seen = _run(
        PYRO_GAUSS
        + """
fit = gm.fit(model, x, gm.inference.Likelihood(), steps=2, batch_size=32, progress=False)
out = {"jax": "jax" in sys.modules, "numpyro": "numpyro" in sys.modules}

def mixed(x=None, n=None):
    import numpyro, numpyro.distributions as nd
    loc = pyro.param("loc", torch.zeros(()))
    with numpyro.plate("data", x.shape[0] if x is not None else n):
        numpyro.sample("x", nd.Normal(float(loc), 1.0), obs=np.asarray(x))

try:
    gm.fit(mixed, x, gm.inference.Likelihood(), steps=2, progress=False)
    out["refused"] = False
except gm.ModelError as e:
    out["refused"] = "mixes Pyro and NumPyro" in str(e)
print(json.dumps(out))
"""
    )
    assert seen == {"jax": False, "numpyro": False, "refused": True}
