"""``write_report``: ArviZ summary tables (Markdown and CSV) and PNG plots of a fit, for ``gmppl report``.

Writes into ``out_dir``:

- ``summary_<group>.csv`` / ``.md`` — ``az.summary`` of ``posterior`` (latents, parameter draws,
  functionals) and ``posterior_predictive`` (mean, sd, ETI, ESS, R-hat, MCSE);
- ``loo.md`` — ``az.loo`` where the tree has a pointwise log-likelihood over enough draws (as
  ``tree.attrs["loo"]`` says; with ``az.loo_approximate_posterior`` for draws from a guide), else
  why it does not apply;
- ``history.png`` — the training history (``loss``, or a sampler's ``lp``) per chain;
- ``ppc.png`` — generated vs observed data, per data dimension (at most 6);
- ``posterior.png`` — ``arviz_plots.plot_dist`` of the ``posterior`` group (at most 6 variables).

Plots use matplotlib's Agg backend; nothing is shown.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _markdown(table: Any) -> str:
    cols = [str(c) for c in table.columns]
    lines = ["| | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for idx, row in table.iterrows():
        lines.append(f"| {idx} | " + " | ".join(str(v) for v in row.to_numpy()) + " |")
    return "\n".join(lines) + "\n"


def _loo(tree: Any) -> str | None:
    """``az.loo`` as ``tree.attrs["loo"]`` says it applies (and the guide-corrected LOO for draws from a
    guide); the note alone where it does not; None without a log-likelihood group."""
    import arviz as az

    if "log_likelihood" not in tree.children:
        return None
    note = str(tree.attrs.get("loo", ""))
    parts = [f"# PSIS-LOO\n\n{note}\n"] if note else ["# PSIS-LOO\n"]
    if tree.log_likelihood.sizes.get("draw", 1) > 1:
        calls = [("az.loo(tree)", lambda: az.loo(tree))]
        if "approximate_posterior" in tree.children:
            ap = tree.approximate_posterior
            calls.append(
                ("az.loo_approximate_posterior", lambda: az.loo_approximate_posterior(tree, ap["log_p"], ap["log_q"]))
            )
    elif note.startswith("az.loo(tree, reff=1.0)"):
        calls = [("az.loo(tree, reff=1.0)", lambda: az.loo(tree, reff=1.0))]
    else:
        return "".join(parts)
    for title, call in calls:
        try:
            parts.append(f"\n## {title}\n\n```\n{call()}\n```\n")
        except (ValueError, TypeError, IndexError) as e:  # ArviZ refuses: say why, keep the rest of the report
            parts.append(f"\n## {title}\n\nfailed: {type(e).__name__}: {e}\n")
    return "".join(parts)


def write_report(fit_or_tree: Any, out_dir: Any, *, x: Any = None, max_plots: int = 6) -> dict[str, Path]:
    """Write tables and PNGs of a ``Fit`` (converted with ``to_arviz(x)``) or a ``DataTree``; returns the paths."""
    import arviz as az
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tree = fit_or_tree.to_arviz(x) if hasattr(fit_or_tree, "to_arviz") else fit_or_tree
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}

    for group in ("posterior", "posterior_predictive"):
        if group not in tree.children:
            continue
        table = az.summary(tree, group=group)
        table.to_csv(out / f"summary_{group}.csv")
        (out / f"summary_{group}.md").write_text(f"# {group}\n\n" + _markdown(table))
        written[f"summary_{group}"] = out / f"summary_{group}.md"

    loo_text = _loo(tree)
    if loo_text is not None:
        (out / "loo.md").write_text(loo_text)
        written["loo"] = out / "loo.md"

    if "sample_stats" in tree.children:
        stats = tree.sample_stats
        name = "loss" if "loss" in stats else ("lp" if "lp" in stats else None)
        if name is not None:
            fig, ax = plt.subplots(figsize=(6, 3.5))
            for c, row in enumerate(np.atleast_2d(stats[name].values)):
                ax.plot(row, lw=0.8, label=f"chain {c}")
            ax.set_xlabel("step" if name == "loss" else "draw")
            ax.set_ylabel(name)
            ax.legend(fontsize=7)
            fig.tight_layout()
            fig.savefig(out / "history.png", dpi=100)
            plt.close(fig)
            written["history"] = out / "history.png"

    if "posterior_predictive" in tree.children:
        var = next(iter(tree.posterior_predictive.data_vars))
        gen = tree.posterior_predictive[var].values
        gen = gen.reshape(-1, int(np.prod(gen.shape[2:]) or 1))
        obs = None
        if "observed_data" in tree.children and var in tree.observed_data:
            o = tree.observed_data[var].values
            obs = o.reshape(len(o), -1)
        k = min(gen.shape[1], max_plots)
        fig, axes = plt.subplots(1, k, figsize=(3 * k, 2.8), squeeze=False)
        for j, ax in enumerate(axes[0]):
            ax.hist(gen[:, j], bins=40, density=True, alpha=0.6, label="generated")
            if obs is not None:
                ax.hist(obs[:, j], bins=40, density=True, alpha=0.6, label="observed")
            ax.set_title(f"{var}[{j}]", fontsize=8)
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "ppc.png", dpi=100)
        plt.close(fig)
        written["ppc"] = out / "ppc.png"

    if "posterior" in tree.children:
        import arviz_plots as azp

        names = list(tree.posterior.data_vars)[:max_plots]
        coords = {
            d: tree.posterior[d].values[:max_plots]
            for d in (tree.attrs.get("example_dim", "obs"),)
            if d in tree.posterior.dims
        }
        pc = azp.plot_dist(tree, var_names=names, coords=coords or None, backend="matplotlib")
        pc.savefig(out / "posterior.png", dpi=100)
        plt.close("all")
        written["posterior"] = out / "posterior.png"
    return written
