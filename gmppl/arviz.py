"""One converter from a `Fit` (either engine, any backend) to an ArviZ ``DataTree``.

Each group is built with ``arviz_base.from_dict`` (with its own dims), then joined. Groups that
do not apply are absent, never empty. Every sample dim is ``(chain, draw)``; chains are the
chains of ``gm.fit(..., chains=C)`` (independently seeded fits, or NUTS chains).

Point fits (one parameter value per chain):
- ``posterior``: latent draws ``z | x`` (``chain, draw, obs, z_dim``) for the given ``x``, where the
  backend gives them (guide, inverse flow); ``draw`` counts ``posterior_samples`` (default 100: ArviZ's
  PSIS-LOO needs at least 25 draws). Summary
  functionals (``functionals={"name": fn}``) of generated data join it as ``(chain, draw)``.
- ``posterior_predictive``: ``num_samples`` generated ``x`` per chain (``chain, draw, x_dim``).
- ``log_likelihood``: pointwise ``log p(x_i)`` for the given ``x`` where a likelihood exists, a
  single draw per chain (``chain, draw=1, obs``).
- ``sample_stats``: the training history, one ``draw`` per step; ``validation_stats``: ``val_loss`` and
  ``val_step`` of a fit with ``validation=``, one ``draw`` per validation.
- ``constant_data``: the inputs given with ``x`` (or the training inputs), ``(obs, ...)``; with inputs,
  ``posterior_predictive`` is per row, ``(chain, draw, obs, x_dim)``.
- ``observed_data``: ``x`` (``obs, x_dim``), else the training data.

Bayesian fits (``Fit.draws``: NUTS, or SVI whose guide covers global sites, with
``Fit.GUIDE_DRAWS`` draws from the guide; ``draw`` counts posterior draws):
- ``posterior``: every sampled site (weights with dims ``<site>_dim_k``); per-example latents
  (``obs, z_dim``) when ``x`` is the data the fit was conditioned on (the default).
- ``posterior_predictive``: one generated ``x`` per posterior draw (epistemic and aleatoric
  spread together; ``gm.uq.functional`` separates them).
- ``log_likelihood``: ``log p(x_i | theta_s)`` per draw, so ``az.loo``/``az.compare`` work.
- ``sample_stats``: the sampler's per-draw statistics (``lp``, ``diverging``, ...), or SVI's history.
- ``approximate_posterior`` (draws from a guide ``q``): ``log_p = log p(x, theta_s)`` and
  ``log_q = log q(theta_s)`` per draw, for ``az.loo_approximate_posterior``.

Dimension names: ``obs`` indexes the examples, ``x_dim``/``x_dim_k`` the data's event axes, and
``z_dim``/``<site>_dim_k`` a site's event axes. A DataTree cannot hold a variable with the name of
one of its dimensions (xarray turns it into a coordinate: ``model(x) -> sample("obs", ..., obs=x)``,
Pyro's own VAE example, would lose its ``log_likelihood`` variable). So a dimension whose name is
also a variable's (an observed or latent site, a functional) is renamed in every group, to
``<dim>_id`` (``obs`` -> ``obs_id``; then ``<dim>_id1``, ``<dim>_id2``, ... while that is taken
too). ``tree.attrs["example_dim"]`` names the dimension that indexes the examples (``"obs"``
unless renamed). ``chain`` and ``draw`` are never renamed (ArviZ reads them by name).

``tree.attrs["loo"]`` says whether and how ``az.loo`` applies (see :func:`loo_note`): Bayesian and
ELBO fits, ``az.loo(tree)``; point-fit ensembles of at least 25 chains, ``az.loo(tree, reff=1.0)``
(independent members, a crude posterior); single point fits and implicit models, not at all.

A backend may add groups through ``backend.arviz_groups(fit, x, seed=, posterior_samples=, log_likelihood=)`` returning
``{group: {var: array with (chain, draw, ...) leading dims}}`` and, optionally, dims in
``{group: {var: [dim names]}}`` as a second item; its variables replace those of the same name
(ELBO: ``log_likelihood`` per guide draw, and log p and log q per draw for
``az.loo_approximate_posterior``; see ``ELBO.arviz_groups``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from gmppl._data import to_numpy
from gmppl._dims import SAMPLE_DIMS, site_dims, x_dims
from gmppl.errors import NotSupported
from gmppl.inference.draws import has_draws, log_likelihood_draws, sample_draws
from gmppl.uq import functional

#: Predictive draws per input row for point fits (``num_samples`` caps it): one generated example per row each.
PER_ROW_DRAWS = 100


def _input_dims(name: str, shape: tuple[int, ...]) -> list[str]:
    stem = name.replace("/", "_").replace(".", "_")
    return [f"{stem}_dim_{i}" for i in range(len(shape))] if len(shape) != 1 else [f"{stem}_dim"]


def to_datatree(
    fit: Any,
    x: Any = None,
    *,
    num_samples: int = 200,
    seed: int = 0,
    posterior_samples: int = 100,
    log_likelihood: bool = True,
    functionals: dict[str, Callable[[np.ndarray], Any]] | None = None,
    functional_samples: int = 500,
) -> Any:
    """Build the ``DataTree`` of a fit; see the module docstring for the groups."""
    import xarray as xr

    xdims = x_dims(fit.info.x_event_shape)
    xs, rows = (fit.data, fit.inputs) if x is None else fit._split(x)
    groups: dict[str, dict[str, np.ndarray]] = {}
    dims: dict[str, dict[str, list[str]]] = {}

    def put(group: str, name: str, value: np.ndarray, d: list[str]) -> None:
        groups.setdefault(group, {})[name] = np.asarray(value)
        dims.setdefault(group, {})[name] = d

    if has_draws(fit):
        _bayesian_groups(fit, x, xs, rows, put, seed=seed, log_likelihood=log_likelihood)
    else:
        _point_groups(fit, x, xs, rows, put, num_samples, seed, posterior_samples, log_likelihood)

    if functionals:
        n_draws = None if has_draws(fit) else int(posterior_samples)
        for name, fn in functionals.items():
            da = functional(fit, fn, functional_samples, num_draws=n_draws, seed=seed)
            put("posterior", name, da.values, list(da.dims[2:]))

    extra = getattr(fit.backend, "arviz_groups", None)
    if extra is not None:
        given = None if x is None else xs  # the hook sees x=None when to_arviz had no x
        kw = {"inputs": rows} if rows else {}
        got = extra(fit, given, seed=seed, posterior_samples=posterior_samples, log_likelihood=log_likelihood, **kw)
        more, more_dims = got if isinstance(got, tuple) else (got, {})
        for group, variables in more.items():
            for name, value in variables.items():
                put(group, name, value, list(more_dims.get(group, {}).get(name, [])))

    hist = fit._histories
    if hist and hist[0]:
        for k in hist[0]:  # validation scores have their own steps: a group of their own
            group = "validation_stats" if k.startswith("val_") else "sample_stats"
            put(group, k, np.stack([np.asarray(h[k], dtype=float) for h in hist]), [])
    if xs is not None:
        put("observed_data", fit.info.observed, np.asarray(xs), ["obs", *xdims])
    for name, value in rows.items():  # the inputs given with the data
        put("constant_data", name, np.asarray(value), ["obs", *_input_dims(name, value.shape[1:])])

    renames = dim_renames(groups, dims)
    dims = {g: {v: [renames.get(d, d) for d in ds] for v, ds in gd.items()} for g, gd in dims.items()}
    attrs = {"backend": type(fit.backend).__name__, "engine": fit.engine, "inference_library": "gmppl"}
    attrs["example_dim"] = renames.get("obs", "obs")
    attrs["loo"] = loo_note(fit, x, groups.get("log_likelihood", {}).get(fit.info.observed))
    tree = xr.DataTree(dataset=xr.Dataset(attrs=attrs))
    for group, variables in groups.items():
        tree[group] = _group(group, variables, dims[group])
    return tree


def dim_renames(groups: dict[str, dict[str, Any]], dims: dict[str, dict[str, list[str]]]) -> dict[str, str]:
    """New names for the dimensions that share a name with a variable of any group (see the module docstring).

    A dimension ``d`` that is also a variable's name becomes ``d_id`` (then ``d_id1``, ``d_id2``, ...),
    avoiding every variable and dimension name in the tree; the same mapping applies to every group,
    so ``obs`` stays one dimension across ``log_likelihood``, ``posterior`` and ``observed_data``.
    """
    names = {v for variables in groups.values() for v in variables}
    used = {d for group_dims in dims.values() for ds in group_dims.values() for d in ds}
    renames: dict[str, str] = {}
    for d in sorted(used & names):
        if d in SAMPLE_DIMS:
            continue
        new, k = f"{d}_id", 0
        while new in names or new in used or new in renames.values():
            k += 1
            new = f"{d}_id{k}"
        renames[d] = new
    return renames


MIN_LOO_DRAWS = 25  # ArviZ's PSIS fits a Pareto tail to min(S/5, 3 sqrt(S)) >= 5 draws


def loo_note(fit: Any, x: Any, ll: np.ndarray | None) -> str:
    """Whether ``az.loo`` applies to the tree, and how to call it (the tree's ``attrs["loo"]``).

    Bayesian fits (NUTS, SVI over global sites) and ELBO fits (per latent draw) hold many draws
    per chain: ``az.loo(tree)``. A point fit holds one draw per chain, ``log p(x_i | theta_c)``: its
    ``C`` chains are independent fits, a crude posterior that ``az.loo(tree, reff=1.0)`` reads once
    ``C >= 25`` (expect Pareto k flags where members disagree); with fewer, PSIS-LOO cannot run.
    Implicit models have no likelihood: ``gm.compare`` ranks them by two-sample statistics.
    """
    if ll is None:
        if fit.info.implicit:
            return (
                "not applicable: the model is implicit (no likelihood, no log_likelihood group); "
                "rank fits with gm.compare(fits, x_test) (MMD, W1)."
            )
        if x is None and not has_draws(fit):
            return "no log_likelihood group: pass x to to_arviz(x) for pointwise log-likelihoods."
        return "not applicable: no pointwise likelihood for this fit."
    total = int(ll.shape[0] * ll.shape[1])
    if ll.shape[1] > 1:
        if has_draws(fit) and fit.draws[0].log_q is not None:
            return (
                "az.loo(tree); the draws come from a guide q: az.loo_approximate_posterior(tree, "
                "tree.approximate_posterior.log_p, tree.approximate_posterior.log_q) corrects for its misfit."
            )
        return "az.loo(tree)"
    if total >= MIN_LOO_DRAWS:
        return (
            f"az.loo(tree, reff=1.0): a point-fit ensemble; its {total} independently seeded members are the draws "
            "of a crude posterior (expect Pareto k flags where they disagree)."
        )
    return (
        f"not applicable: a point fit holds one draw per chain ({total} in all) and ArviZ's PSIS-LOO needs at "
        f"least {MIN_LOO_DRAWS}; fit chains>={MIN_LOO_DRAWS} for an ensemble LOO, or compare held-out "
        "log-likelihoods with gm.compare(fits, x_test)."
    )


def _group(group: str, variables: dict[str, np.ndarray], dims: dict[str, list[str]]) -> Any:
    """One group through ``arviz_base.from_dict`` (dims are per group: ``x`` differs between groups)."""
    import warnings

    import xarray as xr
    from arviz_base import from_dict

    with warnings.catch_warnings():  # point fits: one draw per chain is the design, not a mix-up
        warnings.filterwarnings("ignore", message="Found chain dimension to be longer than draw")
        tree = from_dict({group: variables}, dims={k: v for k, v in dims.items() if v})
    return xr.DataTree(tree[group].to_dataset())


def _point_groups(
    fit: Any,
    x: Any,
    xs: np.ndarray | None,
    rows: dict[str, np.ndarray],
    put: Callable,
    num_samples: int,
    seed: int,
    posterior_samples: int,
    log_likelihood: bool,
) -> None:
    xdims = x_dims(fit.info.x_event_shape)
    obs = fit.info.observed
    if rows:  # the predictive at each input row: (chain, draw, obs, ...)
        m = len(next(iter(rows.values())))
        k = max(1, min(int(num_samples), PER_ROW_DRAWS))
        tiled = {name: np.concatenate([v] * k) for name, v in rows.items()}
        draws = [
            to_numpy(fit.sample(inputs=tiled, seed=seed + c, chain=c)).reshape(k, m, *fit.info.x_event_shape)
            for c in range(fit.chains)
        ]
        put("posterior_predictive", obs, np.stack(draws), ["obs", *xdims])
    else:
        draws = [to_numpy(fit.sample(num_samples, seed=seed + c, chain=c)) for c in range(fit.chains)]
        put("posterior_predictive", obs, np.stack(draws), xdims)
    if x is None:
        return
    assert xs is not None  # the checked x
    given = {obs: xs, **rows} if rows else xs
    if log_likelihood:
        try:
            ll = fit.log_prob_chains(given)
        except NotSupported:
            ll = None
        if ll is not None:
            put("log_likelihood", obs, ll[:, None, :], ["obs"])
    try:
        zs = np.stack(
            [to_numpy(fit.posterior(given, posterior_samples, seed=seed, chain=c)) for c in range(fit.chains)]
        )
    except NotSupported:
        return
    latent = fit.info.latent or "z"
    local = zs.ndim > 2 and zs.shape[2] == len(xs)  # a per-example latent; else a global one (weights, scales)
    put("posterior", latent.replace("/", "."), zs, site_dims(latent, zs.shape[2:], local, latent))


def _bayesian_groups(
    fit: Any, x: Any, xs: np.ndarray, rows: dict[str, np.ndarray], put: Callable, *, seed: int, log_likelihood: bool
) -> None:
    xdims = x_dims(fit.info.x_event_shape)
    obs = fit.info.observed
    d0 = fit.draws[0]
    on_data = x is None or d0.is_data(xs)
    latent = fit.info.latent
    for name in d0.values:
        if name in d0.local and not on_data:
            continue
        value = np.stack([d.values[name] for d in fit.draws])
        var = name.replace("/", ".")  # DataTree variable names cannot hold "/" (NumPyro's module scopes)
        put("posterior", var, value, site_dims(name, value.shape[2:], name in d0.local, latent))
    pairs = list(zip(fit.programs, fit.draws, strict=True))
    if rows:  # one prediction per posterior draw at each input row
        pp = np.stack([sample_draws(p, d, None, seed=seed + c, inputs=rows) for c, (p, d) in enumerate(pairs)])
        put("posterior_predictive", obs, pp, ["obs", *xdims])
    else:
        pp = np.stack([sample_draws(p, d, 1, seed=seed + c)[:, 0] for c, (p, d) in enumerate(pairs)])
        put("posterior_predictive", obs, pp, xdims)
    if log_likelihood:
        try:
            ll = np.stack([log_likelihood_draws(p, d, xs, rows) for p, d in pairs])
        except NotSupported:
            return
        put("log_likelihood", obs, ll, ["obs"])
    if on_data and all(d.log_q is not None for d in fit.draws):  # draws from a guide q
        put("approximate_posterior", "log_p", np.stack([d.log_p for d in fit.draws]), [])
        put("approximate_posterior", "log_q", np.stack([d.log_q for d in fit.draws]), [])
