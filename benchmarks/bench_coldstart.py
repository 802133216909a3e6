"""Time to first step: ``import gmppl`` and a first fit in a fresh process vs the hand-written loops.

Every measurement is a fresh ``python -c`` subprocess (the median of ``REPEATS``, the cases taking turns), so nothing is warm but
the OS file cache. The model is a 2-parameter Gaussian ``x ~ N(loc, scale)`` fitted by maximum likelihood
to 500 points, full batch, 10 Adam steps:

- ``gm.fit(..., Likelihood())`` of the NumPyro program, with gmppl's persistent JAX compilation cache off
  (``GMPPL_JAX_CACHE=off``: a first run on a machine) and warm (the same cache directory after one run),
  against a hand-written ``jax.jit(svi.update)`` NumPyro SVI loop (JAX's own cache off, its default);
- ``gm.fit`` of the Pyro program against a plain torch loop (``Normal.log_prob`` + ``torch.optim.Adam``).

"fit" is the fit's wall clock after the imports (a first fit pays detection, inspection and compilation);
"process" is the subprocess's whole wall clock (interpreter start and imports included). The gmppl under
test is the one on ``$GMPPL_BENCH_SRC`` (default: this checkout); subprocesses run in a temporary directory.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

TITLE = "Cold start: import gmppl and a first 10-step fit, fresh process each"
REPEATS = 5
STEPS, N = 10, 500

_DATA = f"""
import numpy as np
x = np.random.default_rng(0).normal(1.0, 2.0, size={N}).astype(np.float32)
"""

_NUMPYRO_MODEL = """
def model(x=None, n=None):
    loc = numpyro.param("loc", jnp.zeros(()))
    scale = numpyro.param("scale", jnp.ones(()), constraint=constraints.positive)
    with numpyro.plate("data", x.shape[0] if x is not None else n):
        numpyro.sample("x", dist.Normal(loc, scale), obs=x)
"""

IMPORT = """
t0 = time.perf_counter()
import gmppl
out["import_s"] = time.perf_counter() - t0
"""

GMPPL_JAX = f"""
import jax.numpy as jnp, numpyro, numpyro.distributions as dist
from numpyro.distributions import constraints
import gmppl as gm
{_DATA}
{_NUMPYRO_MODEL}
t0 = time.perf_counter()
fit = gm.fit(model, x, gm.inference.Likelihood(), steps={STEPS}, batch_size={N}, progress=False)
out["fit_s"] = time.perf_counter() - t0
"""

HAND_JAX = f"""
import jax, jax.numpy as jnp, numpyro, numpyro.distributions as dist
from numpyro.distributions import constraints
from numpyro.infer import SVI, Trace_ELBO
{_DATA}
{_NUMPYRO_MODEL}
def guide(x=None, n=None):
    pass

t0 = time.perf_counter()
svi = SVI(model, guide, numpyro.optim.Adam(1e-3), Trace_ELBO())
xj = jnp.asarray(x)
state = svi.init(jax.random.PRNGKey(0), xj)
update = jax.jit(svi.update)
for _ in range({STEPS}):
    state, loss = update(state, xj)
jax.block_until_ready(svi.get_params(state))
out["fit_s"] = time.perf_counter() - t0
"""

GMPPL_PYRO = f"""
import pyro, pyro.distributions as dist, torch
from torch.distributions import constraints
import gmppl as gm
{_DATA}
def model(x=None, n=None):
    loc = pyro.param("loc", torch.zeros(()))
    scale = pyro.param("scale", torch.ones(()), constraint=constraints.positive)
    with pyro.plate("data", x.shape[0] if x is not None else n):
        pyro.sample("x", dist.Normal(loc, scale), obs=x)

t0 = time.perf_counter()
fit = gm.fit(model, x, gm.inference.Likelihood(), steps={STEPS}, batch_size={N}, progress=False)
out["fit_s"] = time.perf_counter() - t0
"""

HAND_TORCH = f"""
import torch
{_DATA}
t0 = time.perf_counter()
xt = torch.as_tensor(x)
loc, log_scale = torch.zeros((), requires_grad=True), torch.zeros((), requires_grad=True)
opt = torch.optim.Adam([loc, log_scale], lr=1e-3)
for _ in range({STEPS}):
    loss = -torch.distributions.Normal(loc, log_scale.exp()).log_prob(xt).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
out["fit_s"] = time.perf_counter() - t0
"""


def source_root() -> Path:
    """The gmppl checkout under test: ``$GMPPL_BENCH_SRC``, else the one holding this benchmark."""
    return Path(os.environ.get("GMPPL_BENCH_SRC") or Path(__file__).resolve().parents[1])


def fresh(body: str, env: dict[str, str] | None = None) -> dict[str, float]:
    """Run ``body`` in a fresh interpreter; returns what it put in ``out`` plus ``process_s``, its wall clock."""
    code = "import json, time\nout = {}\n" + textwrap.dedent(body) + "\nprint(json.dumps(out))\n"
    full = {**os.environ, "PYTHONPATH": str(source_root()), "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}
    full.update(env or {})
    with tempfile.TemporaryDirectory() as cwd:
        t0 = time.perf_counter()
        res = subprocess.run([sys.executable, "-c", code], env=full, cwd=cwd, capture_output=True, text=True)
        process_s = time.perf_counter() - t0
    if res.returncode:
        raise RuntimeError(f"benchmark subprocess failed:\n{res.stderr[-3000:]}")
    return {**json.loads(res.stdout.strip().splitlines()[-1]), "process_s": process_s}


def run(quick: bool = False) -> str:
    """Measure every case and print (and return) the markdown table.

    The cases take turns (one process each per round, ``REPEATS`` rounds) and each reports its median, so a
    change in the shared machine's load falls on all of them alike.
    """
    repeats = 1 if quick else REPEATS
    off = {"GMPPL_JAX_CACHE": "off"}
    with tempfile.TemporaryDirectory() as cache:
        warm_env = {"GMPPL_JAX_CACHE": cache}
        fresh(GMPPL_JAX, warm_env)  # fills the cache
        cases = {
            "import gmppl": (IMPORT, None),
            "gmppl JAX, no compilation cache": (GMPPL_JAX, off),
            "gmppl JAX, warm compilation cache": (GMPPL_JAX, warm_env),
            "hand jit NumPyro SVI": (HAND_JAX, off),
            "gmppl Pyro": (GMPPL_PYRO, off),
            "plain torch loop": (HAND_TORCH, off),
        }
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in cases}
        for _ in range(repeats):
            for name, (body, env) in cases.items():
                runs[name].append(fresh(body, env))
    rows = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in runs.items()}
    baseline = {
        "gmppl JAX, no compilation cache": "hand jit NumPyro SVI",
        "gmppl JAX, warm compilation cache": "hand jit NumPyro SVI",
        "gmppl Pyro": "plain torch loop",
    }
    lines = [
        f"### {TITLE} (median of {repeats}; gmppl from {source_root()})",
        "",
        "| case | import gmppl s | first fit s | process s | fit vs baseline | process vs baseline |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in rows.items():
        imp = f"{r['import_s']:.2f}" if "import_s" in r else ""
        fit = f"{r['fit_s']:.2f}" if "fit_s" in r else ""
        ratio_fit = ratio_proc = ""
        if name in baseline:
            b = rows[baseline[name]]
            ratio_fit = f"{r['fit_s'] / b['fit_s']:.2f}x"
            ratio_proc = f"{r['process_s'] / b['process_s']:.2f}x"
        lines.append(f"| {name} | {imp} | {fit} | {r['process_s']:.2f} | {ratio_fit} | {ratio_proc} |")
    text = "\n".join(lines)
    print(text, flush=True)
    return text


if __name__ == "__main__":
    run(quick="--quick" in sys.argv)
