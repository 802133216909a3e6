"""Engine-neutral site analysis: the roles of a program's sites from a Pyro or a NumPyro trace.

Nothing here imports torch or JAX: a Pyro trace's ``nodes`` and a NumPyro trace are both mappings of
site dictionaries with the same keys (``type``, ``fn``, ``value``, ``is_observed``, ``infer``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from gmppl.engines.base import ModelInfo, SiteInfo
from gmppl.errors import DataError, ModelError, NotSupported

#: A trace site read as a mapping: a Pyro ``Message`` or a NumPyro site dict. Pyro's ``Message`` types
#: ``fn`` as any callable and ``value`` as optional, which holds for param and plate sites; the sample
#: sites read through this type hold a distribution and its value.
Site = Mapping[str, Any]


def _is_subsample(site: Site) -> bool:
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


def check_per_example(sites: Any, observed: str, n: int) -> None:
    """Refuse an observed site that scores a batch of ``n`` examples as one event (no data plate): its
    log-density would be one number for the batch, so per-example densities, minibatch scaling and
    everything that averages over examples would be silently wrong."""
    site = sites.get(observed)
    fn = None if site is None else site.get("fn")
    shape = getattr(fn, "batch_shape", None)
    if n < 2 or shape is None or site.get("type") != "sample":
        return
    if len(shape) == 0 or shape[0] != n:
        raise ModelError(
            f"the observed site {observed!r} scores the {n} examples of a batch as one event (its distribution's "
            f"batch shape is {tuple(shape)}, event shape {tuple(getattr(fn, 'event_shape', ()))}): gmppl needs one "
            f"log-density per example. Wrap it in a data plate, `with plate('data', n): sample({observed!r}, d, "
            "obs=x)`, with d's event shape the shape of one example (.to_event(k) for the rest)."
        )


_SHAPE_WRAPPERS = ("Independent", "ExpandedDistribution", "MaskedDistribution")  # same support, elementwise


def _support(fn: Any) -> Any:
    """The observed distribution's support, through wrappers that only reshape or mask (``to_event``,
    ``expand``, ``mask``); ``None`` where none is declared. Not through a ``TransformedDistribution``:
    its base's support is that of the base values, not of the data."""
    d = fn
    while d is not None:
        try:
            support = d.support
        except Exception:  # torch's Distribution.support raises NotImplementedError where undeclared
            support = None
        if support is not None:
            return support
        if type(d).__name__ not in _SHAPE_WRAPPERS:
            return None
        d = getattr(d, "base_dist", None)
    return None


def _dist_name(fn: Any) -> str:
    names, d = [], fn
    while type(d).__name__ in _SHAPE_WRAPPERS and hasattr(d, "base_dist"):
        names.append(type(d).__name__)
        d = d.base_dist
    return "(".join([*names, type(d).__name__]) + ")" * len(names)


def _support_fix(support: Any) -> str:
    c = support
    while hasattr(c, "base_constraint"):  # independent(...) around the elementwise constraint
        c = c.base_constraint
    kind = type(c).__name__.lower()
    if "boolean" in kind:
        return (
            "A Bernoulli likelihood takes 0/1 data: binarise the data (e.g. x > 0.5), or, for values in [0, 1] "
            "such as grey pixels, use ContinuousBernoulli (Pyro) or another distribution on the unit interval."
        )
    if "integer" in kind:
        return "A count likelihood takes whole numbers: round the data, or use a continuous distribution."
    if "interval" in kind:
        return "Rescale the data into the support, or use a distribution whose support holds them."
    if "greater" in kind or "positive" in kind:
        return "Shift or transform the data into the support, or use a distribution on the real line."
    return "Transform the data into the support, or use a distribution whose support holds them."


def check_support(sites: Any, observed: str, example: np.ndarray) -> None:
    """Refuse data outside the observed site's support (grey pixels under a Bernoulli), before any fitting.

    ``sites`` is a trace's site mapping (a Pyro trace's ``nodes`` or a NumPyro trace) from a run
    conditioned on ``example``; the observed site's ``fn.support`` is evaluated on ``example``, as a
    torch tensor (on the site value's device) when the site holds one or the distribution is torch's,
    else as a JAX array. Sites without a distribution or a declared support, supports that cannot be
    checked (dependent ones), and checks that raise are let through: training reports the rest.
    """
    site = sites.get(observed)
    fn = None if site is None else site.get("fn")
    support = None if fn is None else _support(fn)
    if support is None:
        return
    value = site.get("value")
    check = getattr(support, "check", None) or support
    libraries = {type(value).__module__.split(".")[0], type(fn).__module__.split(".")[0]}
    torch_side = bool(libraries & {"torch", "pyro"})  # else NumPyro's (its values may be numpy arrays)
    try:
        if torch_side:
            import torch

            device = getattr(value, "device", None) if isinstance(value, torch.Tensor) else None
            ok = check(torch.as_tensor(np.asarray(example), device=device)).detach().cpu().numpy()
        else:
            try:  # most of NumPyro's constraints are operators that numpy evaluates without a JAX compile
                ok = np.asarray(check(np.asarray(example)))
            except Exception:
                import jax.numpy as jnp

                ok = np.asarray(check(jnp.asarray(example)))
    except Exception:  # a dependent support, shapes that do not broadcast, ...: not checkable here
        return
    n = len(example)
    ok = np.broadcast_to(ok, (n,)) if ok.ndim == 0 else ok
    if ok.shape[0] != n:
        return
    ok = ok.reshape(n, -1).all(axis=1)
    if ok.all():
        return
    bad = np.flatnonzero(~ok)
    row = np.asarray(example[bad[0]]).ravel()
    shown = np.array2string(row[:4], precision=3, separator=", ") + (" ..." if row.size > 4 else "")
    raise DataError(
        f"{len(bad)} of the {n} examples checked lie outside the support of the observed site {observed!r}: its "
        f"distribution {_dist_name(fn)} has support {support} (example {bad[0]} holds {shown}); the log-likelihood "
        f"would be nan or -inf and training would stop on a nan loss. {_support_fix(support)}"
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
    if latent != "z" and latent not in gen_sites:  # "z", the default, falls back to the one latent site
        raise ModelError(
            f"latent={latent!r}: the program has no site of that name (its latent sample sites: {latents}); "
            "pass latent=<one of them>."
        )
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
