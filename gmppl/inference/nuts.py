"""``NUTS``: the PPLs' own No-U-Turn sampler for the exact posterior of small models.

The target is the program's joint density conditioned on the data,
``p(theta, z_{1:n} | x_{1:n}) ∝ p(theta) prod_i p(z_i) p(x_i | z_i, theta)``, over every unobserved
sample site: priors on network weights (Pyro ``PyroModule``/``PyroSample``, NumPyro
``random_flax_module``/``random_eqx_module``), scales, and per-example latents. ``param`` sites
(``pyro.param``, ``pyro.module``, ``numpyro.param``) stay fixed at their current values.
NumPyro programs run NumPyro's NUTS (jitted); Pyro programs run Pyro's.

``gm.fit(model, x, NUTS(num_warmup=500), steps=1000)``: ``num_samples`` defaults to ``steps``;
``chains=C`` runs C independently seeded chains (seeds ``seed + c``). The fit holds the
draws (:class:`gmppl.inference.draws.Draws`); ``Fit.sample`` draws from the posterior
predictive, ``Fit.log_prob`` is its log-density ``log (1/S) sum_s p(x | theta_s)``, and
``to_arviz`` puts the draws in ``posterior`` with ``(chain, draw)`` dims, per-draw pointwise
log-likelihoods in ``log_likelihood`` and one generated ``x`` per draw in ``posterior_predictive``.
The history is NUTS's per-draw statistics (``lp``, ``diverging``, ``acceptance_rate``),
which ``to_arviz`` puts in ``sample_stats``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from gmppl.errors import BackendError, NotSupported
from gmppl.inference.base import SamplerBackend
from gmppl.inference.draws import Draws, local_sites


class NUTS(SamplerBackend):
    """No-U-Turn sampling of every unobserved sample site given the data (see module docstring).

    Example::

        fit = gm.fit(bayes_model, x, gm.inference.NUTS(num_warmup=300, num_samples=300), chains=2)
        az.rhat(fit.to_arviz())
    """

    requires: ClassVar[frozenset[str]] = frozenset({"observation_model"})

    def __init__(
        self,
        num_warmup: int = 500,
        num_samples: int | None = None,
        *,
        target_accept_prob: float = 0.8,
        max_tree_depth: int = 10,
    ):
        for name, v in (("num_warmup", num_warmup), ("num_samples", num_samples)):
            if v is not None and (not isinstance(v, int | np.integer) or isinstance(v, bool) or v < 0):
                raise BackendError(f"NUTS({name}={v!r}): must be a non-negative integer.")
        if num_samples is not None and num_samples < 1:
            raise BackendError("NUTS(num_samples=0): draw at least one sample.")
        if not 0.0 < target_accept_prob < 1.0:
            raise BackendError(f"NUTS(target_accept_prob={target_accept_prob}) must lie in (0, 1).")
        self.num_warmup = int(num_warmup)
        self.num_samples = None if num_samples is None else int(num_samples)
        self.target_accept_prob = float(target_accept_prob)
        self.max_tree_depth = int(max_tree_depth)

    def __repr__(self) -> str:
        return f"NUTS(num_warmup={self.num_warmup}, num_samples={self.num_samples})"

    # ------------------------------------------------------------------ the sampler (gm.fit calls draw)
    def num_draws(self, steps: int) -> int:
        """``num_samples``, or by default ``steps``."""
        return self.num_samples or int(steps)

    def draw(
        self, program: Any, plan: Any, data: Any, *, num_samples: int, seed: int, inputs: dict | None = None
    ) -> tuple[Draws, dict]:
        """``num_samples`` draws after ``num_warmup`` adaptation steps, and NUTS's per-draw statistics."""
        run = self._run_pyro if program.engine == "pyro" else self._run_numpyro
        values, local, history = run(program, np.asarray(data), num_samples, seed, program.as_inputs(inputs))
        if not values:
            raise NotSupported("NUTS found no unobserved sample site to sample; give the model a prior.")
        return Draws(values=values, local=local, x=np.asarray(data)), history

    def _kernel_kwargs(self) -> dict[str, Any]:
        return {"target_accept_prob": self.target_accept_prob, "max_tree_depth": self.max_tree_depth}

    def _run_numpyro(self, program: Any, x: np.ndarray, num_samples: int, seed: int, rows: dict) -> tuple:
        import jax
        from numpyro import handlers
        from numpyro.infer import MCMC
        from numpyro.infer import NUTS as NumPyroNUTS

        model = handlers.substitute(program.fn, data=program.constrain(program.params or {}))
        xa = program.as_array(x)
        tr = handlers.trace(handlers.seed(model, 0)).get_trace(x=xa, n=None, **rows)
        names = [k for k, s in tr.items() if s["type"] == "sample" and not s["is_observed"]]
        mcmc = MCMC(
            NumPyroNUTS(model, **self._kernel_kwargs()),
            num_warmup=self.num_warmup,
            num_samples=num_samples,
            num_chains=1,
            progress_bar=False,
        )
        mcmc.run(
            jax.random.PRNGKey(seed),
            x=xa,
            n=None,
            **rows,
            extra_fields=("potential_energy", "diverging", "accept_prob"),
        )
        samples = mcmc.get_samples()
        extra = mcmc.get_extra_fields()
        values = {k: np.asarray(samples[k]) for k in names if k in samples}
        history = {
            "lp": -np.asarray(extra["potential_energy"], dtype=float),
            "diverging": np.asarray(extra["diverging"], dtype=float),
            "acceptance_rate": np.asarray(extra["accept_prob"], dtype=float),
        }
        return values, local_sites(tr, len(x)), history

    def _run_pyro(self, program: Any, x: np.ndarray, num_samples: int, seed: int, rows: dict) -> tuple:
        import pyro
        import pyro.poutine as poutine
        import torch
        from pyro.infer import MCMC
        from pyro.infer import NUTS as PyroNUTS

        xt = program.as_array(x)
        with torch.random.fork_rng(), program.scope():
            torch.manual_seed(seed)
            pyro.set_rng_seed(seed)
            tr = poutine.trace(program.fn).get_trace(x=xt, n=None, **rows)
            names = [k for k, s in tr.nodes.items() if s["type"] == "sample" and not s["is_observed"]]
            kernel = PyroNUTS(program.fn, **self._kernel_kwargs())
            means: list[float] = []  # Pyro keeps only the running mean of the acceptance probability

            def hook(kernel: Any, params: Any, stage: str, i: int) -> None:
                if stage.startswith("Sample"):
                    means.append(float(kernel._mean_accept_prob))

            mcmc = MCMC(
                kernel, num_samples=num_samples, warmup_steps=self.num_warmup, disable_progbar=True, hook_fn=hook
            )
            mcmc.run(x=xt, n=None, **rows)
            samples = {k: v.detach() for k, v in mcmc.get_samples().items()}
            lp = np.empty(num_samples)
            with torch.no_grad():
                for s in range(num_samples):
                    cond = poutine.condition(program.fn, data={k: v[s] for k, v in samples.items()})
                    lp[s] = float(poutine.trace(cond).get_trace(x=xt, n=None, **rows).log_prob_sum())
        diverging = np.zeros(num_samples)
        div = mcmc.diagnostics().get("divergences", {}).get("chain 0", [])
        diverging[[i for i in div if 0 <= i < num_samples]] = 1.0
        values = {k: samples[k].cpu().numpy() for k in names if k in samples}
        t = np.arange(1, len(means) + 1)
        accept = t * np.asarray(means) - (t - 1) * np.concatenate([[0.0], means[:-1]])
        history = {"lp": lp, "diverging": diverging, "acceptance_rate": np.clip(accept, 0.0, 1.0)}
        return values, local_sites(dict(tr.nodes), len(x)), history
