"""Engine-neutral site analysis: the roles of a program's sites from a Pyro or a NumPyro trace.

Nothing here imports torch or JAX: a Pyro trace's ``nodes`` and a NumPyro trace are both mappings of
site dictionaries with the same keys (``type``, ``fn``, ``value``, ``is_observed``, ``infer``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gmppl.engines.base import ModelInfo, SiteInfo
from gmppl.errors import DataError, ModelError, NotSupported


def _is_subsample(site: dict) -> bool:
    """Pyro's plate records a ``_subsample`` sample site per plate: not a site of the model."""
    return site.get("type") == "sample" and type(site.get("fn")).__name__ == "_Subsample"


def invert_pushforward(fn: Any, x: Any) -> Any:
    """Apply the inverse transforms of a (possibly wrapped) transformed distribution to ``x``."""
    d = fn
    while not hasattr(d, "transforms") and hasattr(d, "base_dist"):
        d = d.base_dist
    if not hasattr(d, "transforms"):
        raise NotSupported(
            f"the observed site's distribution {type(fn).__name__} is not an invertible pushforward, so z | x "
            "has no closed form here; fit with ELBO (a guide gives q(z|x)) or use an invertible g."
        )
    z = x
    for t in reversed(d.transforms):
        z = t.inv(z)
    return z


def check_event_shape(sites: Any, observed: str, example: np.ndarray) -> None:
    """Refuse data whose per-example shape differs from the observed site's, before any fitting."""
    site = sites.get(observed)
    if site is None or not hasattr(site.get("value"), "shape"):
        return  # reported with the other site checks
    shape = tuple(site["value"].shape[1:])
    if tuple(example.shape[1:]) != shape:
        raise DataError(
            f"data examples have shape {tuple(example.shape[1:])} but the program's site {observed!r} generates "
            f"examples of shape {shape}; pass data shaped (n, {', '.join(map(str, shape))})."
        )


def info_from_traces(cond: Any, gen: Any, observed: str, latent: str, n: int, engine: str) -> ModelInfo:
    """Shared by both engines: site roles from a conditioned and a generating run."""
    cond_sites, gen_sites = _sites(cond, engine), _sites(gen, engine)
    names = [s.name for s in gen_sites.values() if s.kind in ("sample", "deterministic")]
    if observed not in gen_sites:
        raise ModelError(
            f"the program has no site named {observed!r} (its sample/deterministic sites: {names}). "
            f"Name the data site {observed!r} or pass observed=<its name>."
        )
    obs_gen, obs_cond = gen_sites[observed], cond_sites.get(observed)
    latents = [s.name for s in gen_sites.values() if s.kind == "sample" and s.name != observed]
    cond_latents = [s.name for s in cond_sites.values() if s.kind == "sample" and not s.observed]
    implicit = obs_gen.kind == "deterministic"
    conditioned = obs_cond is not None and obs_cond.observed and not implicit
    return ModelInfo(
        engine=engine,
        observed=observed,
        latent=latent if latent in gen_sites else (latents[0] if len(latents) == 1 else None),
        latents=tuple(latents),
        unobserved_when_conditioned=tuple(cond_latents),
        x_event_shape=tuple(obs_gen.shape[1:]),
        z_event_shape=tuple(gen_sites[latent].shape[1:]) if latent in gen_sites else None,
        implicit=implicit,
        conditioned=conditioned,
        reparameterized=obs_gen.reparameterized,
        has_log_prob=obs_gen.has_log_prob and not implicit,
        params=tuple(s.name for s in gen_sites.values() if s.kind == "param"),
        obs_dist=obs_gen.fn,
    )


def _sites(tr: Any, engine: str) -> dict[str, SiteInfo]:
    nodes = tr.nodes if engine == "pyro" else tr
    out: dict[str, SiteInfo] = {}
    for name, site in nodes.items():
        kind = site.get("type")
        if kind not in ("sample", "param", "deterministic") or (engine == "pyro" and _is_subsample(site)):
            continue
        fn = site.get("fn")
        if engine == "pyro" and kind == "sample" and site.get("infer", {}).get("_deterministic"):
            kind = "deterministic"
        value = site.get("value")
        shape = tuple(value.shape) if hasattr(value, "shape") else ()
        has_lp = fn is not None and _declares_log_prob(fn)
        rep = (
            kind == "deterministic"
            or bool(getattr(fn, "has_rsample", False))
            or bool(getattr(fn, "reparametrized_params", None) is not None and getattr(fn, "has_rsample", False))
        )
        out[name] = SiteInfo(
            name=name,
            kind=kind,
            observed=bool(site.get("is_observed", False)),
            shape=shape,
            fn=fn,
            has_log_prob=has_lp,
            reparameterized=rep,
        )
    return out


def _declares_log_prob(fn: Any) -> bool:
    base = fn
    while hasattr(base, "base_dist") and not hasattr(type(base), "gmppl_has_log_prob"):
        base = base.base_dist
    flag = getattr(base, "gmppl_has_log_prob", None)
    return True if flag is None else bool(flag)
