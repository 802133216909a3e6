"""Evaluating a program under posterior draws of its latent sites (NUTS, or any Bayesian fit).

A Bayesian fit holds, per chain, a :class:`Draws` (``Fit.draws``) with, for every unobserved sample site,
``S`` values (axis 0). *Global* sites (network weights, variances) are shared by all examples;
*local* sites (a per-example ``z_i``, inside the data plate) belong to the data conditioned on.

- generating: ``x ~ p(x | theta_s)`` with the global draw ``theta_s`` substituted and local
  latents drawn from their prior — :func:`sample_draws` gives ``(S, m, *x_shape)``, so the
  spread across ``s`` is epistemic and the spread within ``s`` aleatoric;
- likelihood: ``log p(x_i | theta_s)`` per draw — :func:`log_likelihood_draws` gives ``(S, n)``;
  on the data conditioned on, local draws are substituted too (``log p(x_i | theta_s, z_{i,s})``,
  what ``az.loo`` takes); for new ``x`` it needs a model without local latents.

Draws come from a sampler (NUTS) or from a fitted variational guide: SVI with a mean-field guide
over the global sites (``AutoNormal``/``AutoDiagonalNormal`` on network weights) gives
``theta_s ~ q(theta)``, ``s = 1..S`` (:func:`guide_draws`), and everything above then works the
same — the posterior predictive ``p(x | data) ~ (1/S) sum_s p(x | theta_s)`` uses the guide's
approximate posterior instead of the exact one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gmppl.engines.base import in_scope
from gmppl.engines.sites import Site
from gmppl.errors import NotSupported


@dataclass
class Draws:
    """Posterior draws of a program's latent sites: ``values[name]`` has shape ``(S, *site_shape)``."""

    values: dict[str, np.ndarray]
    local: frozenset[str] = field(default_factory=frozenset)
    x: np.ndarray | None = None  # the data the local draws belong to
    # draws from a guide q: log p(x, theta_s) (the unnormalised target) and log q(theta_s) per draw
    log_p: np.ndarray | None = None
    log_q: np.ndarray | None = None
    cache: dict = field(default_factory=dict, repr=False, compare=False)  # compiled evaluations, by shape

    @property
    def num_draws(self) -> int:
        return len(next(iter(self.values.values()))) if self.values else 0

    def globals(self) -> dict[str, np.ndarray]:
        return {k: v for k, v in self.values.items() if k not in self.local}

    def is_data(self, x: Any) -> bool:
        """Whether ``x`` is the data the local draws were conditioned on."""
        return self.x is not None and np.shape(x) == self.x.shape and np.array_equal(np.asarray(x), self.x)


def has_draws(fit: Any) -> bool:
    """Whether the fit holds posterior draws of its parameters (a Bayesian fit: NUTS, or SVI over global sites)."""
    return getattr(fit, "draws", None) is not None


def local_sites(sites: dict[str, Any], n: int, observed: str | None = None) -> frozenset[str]:
    """Unobserved sample sites inside a plate of size ``n`` (per-example latents); with ``observed``, only
    plates the observed site sits in too (a weight plate that happens to have size ``n`` is not the data's)."""
    data = None
    if observed is not None and observed in sites:
        data = {f.name for f in sites[observed].get("cond_indep_stack", ()) if getattr(f, "size", None) == n}
    out = set()
    for name, site in sites.items():
        if site.get("type") != "sample" or site.get("is_observed"):
            continue
        frames = [f for f in site.get("cond_indep_stack", ()) if getattr(f, "size", None) == n]
        if any(data is None or f.name in data for f in frames):
            out.add(name)
    return frozenset(out)


def _cached(d: Draws, key: tuple, build: Any) -> Any:
    """A jitted function kept with the draws, so repeated evaluations compile once per shape."""
    if key not in d.cache:
        d.cache[key] = build()
    return d.cache[key]


def _pick(draws: dict[str, np.ndarray], s: int) -> dict[str, np.ndarray]:
    return {k: v[s] for k, v in draws.items()}


@in_scope
def sample_draws(program: Any, d: Draws, m: int | None, *, seed: int = 0, inputs: dict | None = None) -> np.ndarray:
    """``m`` generated examples per posterior draw, or one per input row: shape ``(S, m, *x_shape)`` (numpy)."""
    glob = d.globals()
    if program.engine == "pyro":
        import pyro.poutine as poutine
        import torch

        out = []
        rows = program.as_inputs(inputs)
        m = None if rows else m
        with torch.random.fork_rng(), torch.no_grad(), program.scope():
            torch.manual_seed(seed)
            for s in range(d.num_draws):
                data = {k: torch.as_tensor(v, device=program.device) for k, v in _pick(glob, s).items()}
                tr = poutine.trace(poutine.condition(program.fn, data=data)).get_trace(x=None, n=m, **rows)
                site: Site = tr.nodes[program.observed]
                out.append(site["value"].cpu().numpy())
        return np.stack(out)
    import jax

    params = program.params or {}
    rows = program.as_inputs(inputs)
    m = None if rows else m
    keys = jax.random.split(jax.random.PRNGKey(seed), d.num_draws)
    fn = _cached(
        d,
        ("sample", m),
        lambda: jax.jit(
            jax.vmap(lambda p, g, k, r: program.sample_fn({**p, **g}, k, m, r), in_axes=(None, 0, 0, None))
        ),
    )
    return np.asarray(fn(params, glob, keys, rows))


@in_scope
def sample_predictive(
    program: Any, d: Draws, n: int, *, seed: int | None = None, inputs: dict | None = None
) -> np.ndarray:
    """``n`` draws of the posterior predictive: ``ceil(n / S)`` per parameter draw, shuffled (numpy); with
    ``inputs``, one per row, each given its row under a posterior draw picked at random."""
    seed = int(np.random.SeedSequence(seed).generate_state(1)[0]) if seed is None else int(seed)
    if inputs:
        x = sample_draws(program, d, None, seed=seed, inputs=inputs)
        pick = np.random.default_rng(seed).integers(d.num_draws, size=x.shape[1])
        return x[pick, np.arange(x.shape[1])]
    per = -(-int(n) // d.num_draws)
    x = sample_draws(program, d, per, seed=seed)
    x = x.reshape(-1, *x.shape[2:])
    return x[np.random.default_rng(seed).permutation(len(x))[: int(n)]]


def _jax_site_roles(program: Any, head: np.ndarray, rows: dict) -> dict[str, dict]:
    """Each site's type, observation flag and plates from a run of the NumPyro program on ``head`` (and the first
    rows of ``rows``), on abstract values: no operation runs or compiles (an eager run at a new batch size
    compiled each of the program's operations again). A program that cannot run abstractly runs eagerly."""
    import jax

    def roles(tr: dict) -> dict[str, dict]:
        return {
            k: {
                "type": s["type"],
                "is_observed": s.get("is_observed", False),
                "cond_indep_stack": s.get("cond_indep_stack", ()),
            }
            for k, s in tr.items()
        }

    found: dict[str, dict] = {}

    def run(xh: Any, rs: dict) -> None:
        found.update(roles(program.trace(program.params, jax.random.PRNGKey(0), x=xh, inputs=rs)))

    from gmppl.engines.numpyro import first_rows

    m = len(head)
    try:
        jax.eval_shape(run, *first_rows((head, rows), m))
        return found
    except Exception:  # e.g. a value read in Python (a branch, np.asarray): the eager run, which also reports errors
        x = program.as_array(head)
        return roles(
            program.trace(program.params, jax.random.PRNGKey(0), x=x, inputs={k: v[:m] for k, v in rows.items()})
        )


def _latent_names(sites: dict[str, Any]) -> list[str]:
    """Unobserved sample sites, not counting plates (Pyro records a plate as a ``_Subsample`` site)."""
    return [
        k
        for k, v in sites.items()
        if v["type"] == "sample" and not v.get("is_observed") and type(v.get("fn")).__name__ != "_Subsample"
    ]


@in_scope
def guide_draws(
    program: Any, guide: Any, x: np.ndarray, num_draws: int, *, seed: int = 0, inputs: dict | None = None
) -> Draws | None:
    """``num_draws`` draws of the model's latent sites from a fitted guide run on the data ``x``.

    Returns None when the guide samples no *global* site (an amortised ``q(z_i | x_i)`` alone: a
    point fit of the network, not a Bayesian one). Local sites the guide samples (per example of
    ``x``) are kept, as NUTS keeps its per-example draws. Each draw also records the target
    ``log p(x, theta_s)`` and the guide's ``log q(theta_s)`` (``az.loo_approximate_posterior``).
    """
    x = np.asarray(x)
    n, s_num = len(x), int(num_draws)
    if program.engine == "pyro":
        import pyro.poutine as poutine
        import torch

        head = x[: min(n, 16)]  # site roles from a few examples: a VAE on big data is not run on all of it
        rows = program.as_inputs(inputs)
        model_tr = program.trace(x=program.as_array(head), inputs={k: v[: len(head)] for k, v in rows.items()}).nodes
        names = _latent_names(model_tr)
        local = local_sites(model_tr, len(head), program.observed)
        if not set(names) - local:
            return None
        xt = program.as_array(x)
        drawn_rows: dict[str, list] = {}
        log_p, log_q = np.empty(s_num), np.empty(s_num)
        devices = [program.device] if program.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad(), program.scope():
            torch.manual_seed(seed)
            for s in range(s_num):
                gtr = poutine.trace(guide).get_trace(xt, **rows)
                drawn = {k: gtr.nodes[k]["value"].detach() for k in names if k in gtr.nodes}
                for k, v in drawn.items():
                    drawn_rows.setdefault(k, []).append(v.cpu().numpy())
                mtr = poutine.trace(poutine.condition(program.fn, data=drawn)).get_trace(x=xt, n=None, **rows)
                log_q[s], log_p[s] = float(gtr.log_prob_sum()), float(mtr.log_prob_sum())
        values = {k: np.stack(v) for k, v in drawn_rows.items()}
    else:
        import jax
        from numpyro import handlers

        head = x[: min(n, 16)]
        rows = program.as_inputs(inputs)
        model_tr = _jax_site_roles(program, head, rows)
        names = _latent_names(model_tr)
        local = local_sites(model_tr, len(head), program.observed)
        if not set(names) - local:
            return None
        xa = program.as_array(x)

        from numpyro.infer.util import log_density

        def one(params: Any, key: Any, xa: Any, rows: dict) -> tuple:
            c = program.constrain(params)
            tr = handlers.trace(handlers.seed(handlers.substitute(guide, data=c), key)).get_trace(xa, **rows)
            drawn = {k: tr[k]["value"] for k in names if k in tr}
            lq = sum(
                (site["scale"] if site.get("scale") is not None else 1.0) * site["fn"].log_prob(site["value"]).sum()
                for site in tr.values()
                if site["type"] == "sample"
            )
            lp, _ = log_density(program.fn, (), {"x": xa, "n": None, **rows}, {**c, **drawn})
            return drawn, lp, lq

        keys = jax.random.split(jax.random.PRNGKey(seed), s_num)
        fn = jax.jit(jax.vmap(one, in_axes=(None, 0, None, None)))
        drawn, lp, lq = fn(program.params, keys, xa, rows)
        values = {k: np.asarray(v) for k, v in drawn.items()}
        log_p, log_q = np.asarray(lp, dtype=float), np.asarray(lq, dtype=float)
    if not set(values) - local:
        return None
    return Draws(values=values, local=frozenset(local & set(values)), x=x, log_p=log_p, log_q=log_q)


@in_scope
def log_likelihood_draws(program: Any, d: Draws, x: Any, inputs: dict | None = None) -> np.ndarray:
    """``log p(x_i | draw_s)`` for every draw ``s`` and example ``i`` (given its inputs): shape ``(S, len(x))``."""
    on_data = d.is_data(x)
    if d.local and not on_data:
        raise NotSupported(
            f"the posterior has per-example latents {sorted(d.local)}: log p(x | theta) of new x needs them "
            "integrated out, which a sampler's draws do not give. Evaluate on the data the fit was conditioned on."
        )
    vals = d.values if on_data else d.globals()
    if program.engine == "pyro":
        import pyro.poutine as poutine
        import torch

        xt = program.as_array(np.asarray(x))
        rows = program.as_inputs(inputs)
        out = []
        with torch.no_grad(), program.scope():
            for s in range(d.num_draws):
                data = {k: torch.as_tensor(v, device=program.device) for k, v in _pick(vals, s).items()}
                tr = poutine.trace(poutine.condition(program.fn, data=data)).get_trace(x=xt, n=None, **rows)
                site: Site = tr.nodes[program.observed]
                lp = site["fn"].log_prob(site["value"])
                out.append((lp.reshape(lp.shape[0], -1).sum(-1) if lp.dim() > 1 else lp).cpu().numpy())
        return np.stack(out)
    import jax

    params = program.params or {}
    xa = program.as_array(np.asarray(x))
    fn = _cached(
        d,
        ("log_likelihood", tuple(sorted(vals))),
        lambda: jax.jit(
            jax.vmap(lambda p, g, x, r: program.log_prob_fn({**p, **g}, x, None, r), in_axes=(None, 0, None, None))
        ),
    )
    return np.asarray(fn(params, vals, xa, program.as_inputs(inputs)))


@in_scope
def log_predictive(program: Any, d: Draws, x: Any, inputs: dict | None = None) -> np.ndarray:
    """Posterior predictive log-density ``log (1/S) sum_s p(x_i | theta_s)``: shape ``(len(x),)``."""
    ll = log_likelihood_draws(program, d, x, inputs)
    return np.logaddexp.reduce(ll, axis=0) - np.log(ll.shape[0])


@in_scope
def latent_draws(program: Any, d: Draws, x: Any, num_samples: int, *, seed: int | None = None) -> np.ndarray:
    """Draws of the per-example latent given the data the fit was conditioned on: ``(num_samples, n, *z)``."""
    latent = program.latent if program.latent in d.local else (sorted(d.local)[0] if d.local else None)
    if latent is None or not d.is_data(np.asarray(x)):
        raise NotSupported(
            "the posterior draws hold latents only for the data the fit was conditioned on"
            + ("" if latent else " (and this model has no per-example latent)")
            + "; pass that data, or fit the new points."
        )
    z = d.values[latent]
    idx = np.random.default_rng(seed).choice(len(z), size=int(num_samples), replace=len(z) < num_samples)
    return z[idx]
