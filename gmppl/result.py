"""``gm.Fit``: a fitted model — samples, likelihoods, latent posteriors, history, ArviZ, save; ``gm.load``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from gmppl._data import check_inputs, check_seed, split_data, take, to_numpy
from gmppl.engines.base import ModelInfo, serial
from gmppl.errors import DataError, NotSupported
from gmppl.io import flatten_params, read, save


class Fit:
    """The result of ``gm.fit`` (or ``gm.load``): one trained program per chain, with its backend's plan.

    ``history`` maps a metric name (``loss``, ``grad_norm``, backend-specific estimates) to its
    per-step values: shape ``(steps,)`` for one chain, ``(chains, steps)`` for several; with
    ``validation=``, ``val_loss`` at the steps ``val_step``.

    A *Bayesian* fit holds posterior draws of its parameters per chain (``draws``): NUTS's samples, or,
    for SVI whose guide covers global sites (priors on the weights of ``g`` with
    ``AutoNormal``/``AutoDiagonalNormal``), ``GUIDE_DRAWS`` draws ``theta_s ~ q(theta)`` taken when the
    fit ends (:meth:`guide_draws` redraws them). ``sample``, ``log_prob`` and ``to_arviz`` then use the
    posterior predictive ``(1/S) sum_s p(x | theta_s)``.
    """

    GUIDE_DRAWS = 1000

    def __init__(
        self,
        *,
        model: Callable,
        engine: str,
        backend: Any,
        programs: list,
        plans: list,
        info: ModelInfo,
        histories: list[dict[str, np.ndarray]],
        data: np.ndarray | None,
        config: dict,
        draws: list | None = None,
        inputs: dict[str, np.ndarray] | None = None,
    ):
        self.model = model
        self.engine = engine
        self.backend = backend
        self.programs = programs
        self.plans = plans
        self.info = info
        self.data = data
        self.inputs = inputs or {}  # the training data's inputs, by name (ArviZ constant_data)
        self.config = config
        self.draws = draws
        self._histories = histories

    # ------------------------------------------------------------------ basics
    @property
    def chains(self) -> int:
        return len(self.programs)

    @property
    def program(self) -> Any:
        return self.programs[0]

    @property
    def plan(self) -> Any:
        return self.plans[0]

    @property
    def is_bayesian(self) -> bool:
        """Whether every chain holds posterior draws of its parameters (NUTS, or SVI over global sites)."""
        return self.draws is not None

    @property
    def params(self) -> dict[str, np.ndarray]:
        """The fitted values as numpy arrays, constrained (what ``pyro.param``/``numpyro.param`` return inside
        the program), module weights included (pytrees flattened by key path); with several chains each
        array has a leading chain axis."""
        per = [self.numpy_params(p) for p in self.programs]
        if len(per) == 1:
            return per[0]
        return {k: np.stack([d[k] for d in per]) for k in per[0]}

    @serial
    def write_back(self, chain: int = 0) -> None:
        """Write one chain's fitted values into the caller's modules (Pyro ``nn.Module`` weights), for a user who
        goes on with them; a fit otherwise leaves them as they were. NumPyro modules hold no values: their
        fitted parameters are ``params``."""
        if self.engine != "pyro":
            raise NotSupported(
                "NumPyro modules are functional and hold no values to write; the fitted parameters are fit.params "
                "(a mapping of arrays), which you pass to the module's apply."
            )
        if not 0 <= chain < self.chains:
            raise DataError(f"chain={chain} is out of range: this fit has {self.chains} chain(s).")
        self.programs[chain].write_back()

    @staticmethod
    def numpy_params(program: Any) -> dict[str, np.ndarray]:
        """One program's constrained values as a flat ``{name: numpy array}``."""
        return flatten_params(program.constrained_params())

    def guide_draws(self, num_draws: int = GUIDE_DRAWS, seed: int | None = None) -> bool:
        """(Re)draw ``num_draws`` parameter draws per chain from the fitted guide (SVI fits).

        Chain ``c`` uses seed ``seed + c`` (default: the fit's seed). Returns whether the guide
        covers a global site (else the fit stays a point fit and nothing is drawn).
        """
        from gmppl.inference.draws import guide_draws

        fitted_guide = getattr(self.backend, "fitted_guide", None)
        if fitted_guide is None or self.data is None:
            return False
        seed = int(self.config.get("seed", 0) if seed is None else seed)
        got = [
            guide_draws(p, fitted_guide(plan), self.data, int(num_draws), seed=seed + c, inputs=self.inputs)
            for c, (p, plan) in enumerate(zip(self.programs, self.plans, strict=True))
        ]
        if any(d is None for d in got):
            return False
        self.draws = got
        return True

    @property
    def history(self) -> dict[str, np.ndarray]:
        if not self._histories:
            return {}
        keys = self._histories[0].keys()
        if self.chains == 1:
            return dict(self._histories[0])
        return {k: np.stack([h[k] for h in self._histories]) for k in keys}

    def __repr__(self) -> str:
        return (
            f"Fit({type(self.backend).__name__}, engine={self.engine!r}, chains={self.chains}, "
            f"steps={self.config.get('steps')}, x_shape={self.info.x_event_shape})"
        )

    @property
    def input_names(self) -> list[str]:
        """The names of the program's inputs (empty for an unconditional model)."""
        return list(self.config.get("inputs") or sorted(self.inputs))

    def _check_inputs(self, inputs: Any, n: int | None) -> dict[str, np.ndarray]:
        rows = check_inputs(inputs, n)
        names = self.input_names
        if sorted(rows) != sorted(names):
            if not names:
                raise DataError(f"this model takes no inputs, but inputs {sorted(rows)} were given.")
            raise DataError(f"this model takes the inputs {names}; got {sorted(rows)}. {_pass(names)}")
        return rows

    def _split(self, x: Any) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """``x`` (an array, or a mapping with the observed data and the inputs) as checked ``(data, inputs)``."""
        arr, inputs = split_data(x, self.info.observed, name="x")
        if tuple(arr.shape[1:]) != tuple(self.info.x_event_shape):
            raise DataError(
                f"x examples have shape {tuple(arr.shape[1:])}; this model's are {tuple(self.info.x_event_shape)}."
            )
        if inputs or self.input_names:
            inputs = self._check_inputs(inputs, len(arr))
        return arr.astype(self.data.dtype if self.data is not None else np.float32, copy=False), inputs

    def _check_x(self, x: Any) -> np.ndarray:
        return self._split(x)[0]

    # ------------------------------------------------------------------ generation
    @serial
    def sample(
        self, n: int | None = None, seed: int | None = None, *, inputs: Any = None, chain: int | None = None
    ) -> Any:
        """``n`` generated examples, shape ``(n, *x_shape)``: from one chain, or spread over the ensemble.

        With ``inputs`` (a mapping of arrays, one row each), one example per input row, generated given that
        row (``n`` may be omitted); a conditional model needs them.
        """
        rows: dict[str, np.ndarray] = {}
        if seed is not None:
            seed = check_seed(seed, count=self.chains)
        if inputs is not None or self.input_names:
            if inputs is None:
                raise DataError(f"this model is conditional on {self.input_names}. {_pass(self.input_names)}")
            rows = self._check_inputs(inputs, None)
            m = len(next(iter(rows.values())))
            if n is not None and _count(n, "n") != m:
                raise DataError(f"n={n} but the inputs have {m} rows: one example is generated per input row.")
            n = m
        if n is None:
            raise DataError("sample() needs n, the number of examples (or inputs= for a conditional model).")
        n = _count(n, "n")
        if n == 0:  # no draws: an empty array of the examples' shape, in the engine's array type
            dtype = self.data.dtype if self.data is not None else np.float32
            return self.programs[chain or 0].as_array(np.zeros((0, *self.info.x_event_shape), dtype))
        if chain is not None or self.chains == 1:
            return self._sample_chain(chain or 0, n, seed, rows)
        rng = np.random.default_rng(seed)
        if rows:  # each row from a chain drawn uniformly, in the rows' order
            which = rng.integers(self.chains, size=n)
            parts = {
                c: self._sample_chain(
                    c, int((which == c).sum()), None if seed is None else seed + c, take(rows, which == c)
                )
                for c in range(self.chains)
                if (which == c).any()
            }
            order = np.argsort(np.concatenate([np.nonzero(which == c)[0] for c in parts]), kind="stable")
            return _concatenate(list(parts.values()))[_index(order, parts)]
        counts = rng.multinomial(n, np.full(self.chains, 1 / self.chains))
        parts_list = [
            self._sample_chain(c, int(k), None if seed is None else seed + c, {}) for c, k in enumerate(counts) if k > 0
        ]
        return _concatenate(parts_list)

    def _sample_chain(self, c: int, n: int, seed: int | None, inputs: dict[str, np.ndarray]) -> Any:
        program = self.programs[c]
        if self.draws is not None:
            from gmppl.inference.draws import sample_predictive

            return program.as_array(sample_predictive(program, self.draws[c], n, seed=seed, inputs=inputs))
        with program.scope():
            return self.backend.sample(program, self.plans[c], None if inputs else n, seed=seed, inputs=inputs or None)

    # ------------------------------------------------------------------ densities
    @serial
    def log_prob(self, x: Any, **kwargs: Any) -> Any:
        """Per-example ``log p(x_i)``: exact for flows and diffusion; an estimate for ELBO fits.

        For an ensemble, the log-density of the equally weighted mixture of its chains; for a Bayesian
        fit (NUTS, SVI over global sites) the posterior predictive ``log (1/S) sum_s p(x_i | theta_s)``
        (SVI: over the guide's draws; the ELBO's ``num_particles`` then does not apply).
        Raises ``gm.NotSupported`` for implicit models.
        """
        arr, inputs = self._split(x)
        values = [self._log_prob_chain(c, arr, inputs, **kwargs) for c in range(self.chains)]
        if len(values) == 1:
            return values[0]
        stacked = np.stack([to_numpy(getattr(v, "value", v)) for v in values])
        return np.logaddexp.reduce(stacked, axis=0) - np.log(len(values))

    @serial
    def log_prob_chains(self, x: Any, **kwargs: Any) -> np.ndarray:
        """``log p_c(x_i)`` for every chain ``c``: shape ``(chains, len(x))``."""
        arr, inputs = self._split(x)
        return np.stack(
            [
                to_numpy(getattr(v, "value", v))
                for v in (self._log_prob_chain(c, arr, inputs, **kwargs) for c in range(self.chains))
            ]
        )

    def _log_prob_chain(self, c: int, arr: np.ndarray, inputs: dict[str, np.ndarray], **kwargs: Any) -> Any:
        program = self.programs[c]
        if self.draws is not None:
            from gmppl.inference.draws import log_predictive

            return log_predictive(program, self.draws[c], arr, inputs)
        rows = program.as_inputs(inputs) or None
        with program.scope():
            return self.backend.log_prob(program, self.plans[c], program.as_array(arr), inputs=rows, **kwargs)

    @serial
    def posterior(self, x: Any, num_samples: int = 100, seed: int | None = None, *, chain: int = 0) -> Any:
        """Draws of the latent ``z`` given ``x``: shape ``(num_samples, len(x), *z_shape)``."""
        arr, inputs = self._split(x)
        num_samples = _count(num_samples, "num_samples")
        if seed is not None:
            seed = check_seed(seed)
        program = self.programs[chain]
        if self.draws is not None and not hasattr(self.backend, "fitted_guide"):  # a sampler's latent draws
            from gmppl.inference.draws import latent_draws

            return program.as_array(latent_draws(program, self.draws[chain], arr, num_samples, seed=seed))
        rows = program.as_inputs(inputs) or None
        with program.scope():
            return self.backend.posterior(
                program, self.plans[chain], program.as_array(arr), num_samples, seed=seed, inputs=rows
            )

    # ------------------------------------------------------------------ outputs
    @serial
    def to_arviz(self, x: Any = None, *, num_samples: int = 200, seed: int = 0, **kwargs: Any) -> Any:
        """An ArviZ ``DataTree``: posterior_predictive, log_likelihood, posterior, sample_stats, observed_data."""
        from gmppl.arviz import to_datatree

        return to_datatree(self, x, num_samples=num_samples, seed=seed, **kwargs)

    @serial
    def save(self, path: Any) -> None:
        """Write weights (safetensors) and metadata (JSON) to directory ``path``; loads without running code.

        Atomic and verified: ``path`` ends up holding either its previous fit or this one, never a mix, and
        ``gm.load`` checks every file's SHA-256 (``manifest.json``) first. ``path`` must be new, empty, or a
        previous saved fit, which is replaced (see ``gmppl.io``)."""
        save(self, path)


@serial
def load(path: Any, model: Callable, backend: Any = None, *, device: Any = None) -> Fit:
    """``gm.load``: restore a fit saved by ``Fit.save`` for the same ``model``; weights load without running code.

    ``backend`` rebuilds the saved one when None (pass it for a backend with settings JSON cannot hold,
    such as a custom guide); ``device`` places a torch program's parameters. Refuses
    (``gm.CheckpointError``) a directory that is corrupt, holds only pickles, or whose parameters do
    not match ``model``'s.
    """
    return Fit(model=model, **read(path, model, backend, device=device))


def _count(n: Any, name: str) -> int:
    if not isinstance(n, int | np.integer) or isinstance(n, bool) or n < 0:
        raise DataError(f"{name}={n!r} must be a non-negative integer.")
    return int(n)


def _concatenate(parts: list) -> Any:
    if hasattr(parts[0], "detach"):
        import torch

        return torch.cat(parts)
    import jax.numpy as jnp

    return jnp.concatenate(parts)


def _pass(names: list[str]) -> str:
    return f"Pass inputs={{{', '.join(f'{k!r}: ...' for k in names)}}} with one row per example."


def _index(order: np.ndarray, parts: dict) -> Any:
    """``order`` as an index for the engine's arrays (torch tensors take a tensor on their device)."""
    first = next(iter(parts.values()))
    if hasattr(first, "detach"):
        import torch

        return torch.as_tensor(order, device=first.device)
    return order
