"""The ``gmppl`` command: ``fit``, ``sample``, ``report`` and ``demo``.

Run directories are untrusted input: ``gmppl fit`` records the model file's absolute path and SHA-256 in
``meta.json``, and ``sample``/``report`` import that file only when it lies outside the run directory and its
SHA-256 still matches; otherwise they refuse and ask for ``--model PATH:FUNCTION``. The hash shows the file is
the one the fit was made with; it cannot show that a run directory someone else wrote is honest, so a run from
elsewhere should always be given ``--model``. Output paths are checked before any training
(``gmppl.io.check_output``); a fit's files, its held-out data and DataTree included, are saved atomically.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from gmppl.errors import BackendError, CheckpointError, GmpplError, ModelError

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Fit deep generative models written in Pyro or NumPyro."
)

BACKENDS = ("likelihood", "elbo", "adversarial", "score", "flow_matching", "nuts")


def load_model(spec: str) -> Any:
    """``path/to/file.py:function`` → the function (the user's own program file is imported)."""
    path, sep, name = spec.rpartition(":")
    if not sep or not path or not name:
        raise ModelError(f"model {spec!r}: write it as PATH:FUNCTION, e.g. examples/models.py:flow_model.")
    file = Path(path)
    if not file.is_file():
        raise ModelError(f"model {spec!r}: no such file {path!r}.")
    mod_name = f"_gmppl_user_{file.stem}"
    module_spec = importlib.util.spec_from_file_location(mod_name, file)
    if module_spec is None or module_spec.loader is None:
        raise ModelError(f"model {spec!r}: {path} cannot be imported as a Python module.")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[mod_name] = module
    module_spec.loader.exec_module(module)
    fn = getattr(module, name, None)
    if not callable(fn):
        names = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_"))
        raise ModelError(f"model {spec!r}: {path} has no function {name!r} (it has: {', '.join(names[:12])}).")
    return fn


def make_backend(name: str, divergence: str | None = None, method: str | None = None) -> Any:
    """A backend from its CLI name."""
    from gmppl import inference

    key = name.lower()
    if key == "likelihood":
        return inference.Likelihood()
    if key == "elbo":
        return inference.ELBO()
    if key == "adversarial":
        return inference.Adversarial(divergence=divergence or "js")
    if key == "score":
        return inference.Score() if method is None else inference.Score(method=method)
    if key == "flow_matching":
        return inference.FlowMatching()
    if key == "nuts":
        return inference.NUTS()
    from gmppl.errors import UnknownName

    raise UnknownName(f"--backend {name!r} is unknown; use one of {', '.join(BACKENDS)}.")


def _rows(x: Any, index: slice) -> Any:
    """Rows of an array, or of every array of a mapping (data and inputs together)."""
    return {k: v[index] for k, v in x.items()} if isinstance(x, dict) else x[index]


def _fail(e: Exception) -> None:
    typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


@app.command()
def fit(
    model: Annotated[str, typer.Argument(help="PATH.py:FUNCTION, the Pyro or NumPyro program")],
    data: Annotated[
        str,
        typer.Option(
            help="FILE.npy|.npz|.csv, or moons|digits|ring|grid; a .npz with several arrays holds the "
            "observed data (--observed) and the inputs of a conditional model"
        ),
    ] = "moons",
    observed: Annotated[str, typer.Option(help="the observed site (and, in a .npz, the data's array)")] = "x",
    backend: Annotated[str, typer.Option(help="|".join(BACKENDS))] = "likelihood",
    divergence: Annotated[str | None, typer.Option(help="for adversarial: js, kl, reverse_kl, w1, ...")] = None,
    method: Annotated[str | None, typer.Option(help="for score: dsm or sliced")] = None,
    engine: Annotated[str | None, typer.Option(help="pyro|numpyro (detected when omitted)")] = None,
    steps: int = 1000,
    batch_size: int = 128,
    seed: int = 0,
    chains: int = 1,
    lr: Annotated[float | None, typer.Option(help="Adam learning rate (backend default when omitted)")] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1")] = None,
    test_fraction: Annotated[float, typer.Option(help="held out for the report")] = 0.2,
    out: Annotated[Path, typer.Option(help="directory for the saved fit")] = Path("gmppl-fit"),
    checkpoint: Annotated[
        Path | None, typer.Option(help="directory for checkpoints: a killed fit continues with --resume")
    ] = None,
    checkpoint_every: Annotated[
        int | None, typer.Option(help="steps between checkpoints (default: a tenth of --steps)")
    ] = None,
    resume: Annotated[bool, typer.Option(help="continue from the newest checkpoint in --checkpoint")] = False,
) -> None:
    """Fit MODEL to DATA with BACKEND and save the fit (weights, metadata, DataTree) to OUT.

    OUT must be a new or empty directory, or a previous fit (replaced atomically once training is done); it
    is checked before training. A .csv whose first row is not numeric takes it as a header and skips it.
    With --checkpoint DIR the fit writes its whole state every --checkpoint-every steps; after a kill, the
    same command with --resume continues it, bitwise on CPU. Ctrl-C stops cleanly and saves the fit so far.
    """
    import gmppl as gm
    from gmppl._data import check_seed
    from gmppl._files import sha256_file
    from gmppl.datasets import load_arrays
    from gmppl.io import check_output

    try:
        check_output(out)
        check_seed(seed, count=chains, name="--seed")
        if lr is not None:
            _check_lr(lr)
        if not 0 <= test_fraction < 1:
            raise BackendError(f"--test-fraction {test_fraction} must be in [0, 1), e.g. 0.2.")
        fn = load_model(model)
        model_file = Path(model.rpartition(":")[0]).resolve()
        x = load_arrays(data)
        n = len(next(iter(x.values()))) if isinstance(x, dict) else len(x)
        n_test = int(n * test_fraction)
        x_train, x_test = (
            (_rows(x, slice(None, n - n_test)), _rows(x, slice(n - n_test, None))) if n_test else (x, None)
        )
        b = make_backend(backend, divergence, method)
        result = gm.fit(
            fn,
            x_train,
            b,
            observed=observed,
            steps=steps,
            batch_size=batch_size,
            seed=seed,
            chains=chains,
            device=device,
            engine=engine,
            optim=lr,
            checkpoint=checkpoint,
            checkpoint_every=checkpoint_every,
            resume=resume,
        )
    except GmpplError as e:
        _fail(e)
    if result.config.get("interrupted"):
        typer.echo(f"interrupted at step {result.config['steps_run']}: saving the fit so far", err=True)
    result.config["model_spec"] = model
    result.config["model_path"] = str(model_file)
    result.config["model_sha256"] = sha256_file(model_file)
    tree = result.to_arviz(_rows(x_test, slice(None, 200)) if x_test is not None else None)

    def extra(d: Path) -> None:  # written into the new fit's directory before it is hashed and put in place
        if isinstance(x_test, dict):
            np.savez(d / "test_data.npz", **x_test)
        elif x_test is not None:
            np.save(d / "test_data.npy", x_test, allow_pickle=False)
        tree.to_netcdf(d / "datatree.nc")

    from gmppl.io import save

    try:
        save(result, out, extra=extra)
    except GmpplError as e:
        _fail(e)
    from gmppl.engines.distributed import is_writer

    if is_writer(result.engine):  # under torchrun rank 0 saved it, across JAX hosts process 0
        typer.echo(f"saved {result!r} to {out}")


def _check_lr(lr: float) -> None:
    import math

    if not math.isfinite(lr) or lr <= 0:
        raise BackendError(f"--lr {lr} must be a positive learning rate, e.g. --lr 1e-3.")


@app.command()
def sample(
    run_dir: Annotated[Path, typer.Argument(help="a directory written by `gmppl fit`")],
    n: Annotated[int, typer.Option("-n", help="number of samples (at least 1)")] = 1000,
    seed: int = 0,
    model: Annotated[str | None, typer.Option(help="PATH:FUNCTION (default: the one the fit recorded)")] = None,
    inputs: Annotated[
        Path | None, typer.Option(help="FILE.npz of inputs for a conditional model: one sample per row")
    ] = None,
    out: Annotated[Path, typer.Option(help=".npy file")] = Path("samples.npy"),
) -> None:
    """Draw N samples (or one per row of --inputs) from a saved fit into an .npy file.

    Without --model, the program file the fit recorded is imported only if its SHA-256 still matches.
    """
    import gmppl as gm
    from gmppl._data import check_seed, to_numpy
    from gmppl.datasets import load_arrays

    try:
        if n < 1:
            raise BackendError(f"-n {n}: the number of samples must be at least 1.")
        check_seed(seed, name="--seed")
        if not out.name.endswith(".npy"):  # as np.save names it
            out = out.with_name(out.name + ".npy")
        _check_file_output(out)
        fit_ = gm.load(run_dir, load_model(model or _recorded_model(run_dir)))
        rows = None
        if inputs is not None:
            given = load_arrays(str(inputs))
            rows = given if isinstance(given, dict) else {fit_.input_names[0]: given} if fit_.input_names else None
        x = to_numpy(fit_.sample(None if rows else n, seed=seed, inputs=rows))
    except GmpplError as e:
        _fail(e)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}.npy")
    try:
        np.save(tmp, x, allow_pickle=False)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    typer.echo(f"wrote {len(x)} samples to {out}")


def _check_file_output(out: Path) -> None:
    """An output file's path must not be a directory, and its directory must exist and be writable."""
    if out.is_dir():
        raise CheckpointError(f"--out {out} is a directory; give a file name such as samples.npy.")
    parent = out.absolute().parent
    if not parent.is_dir():
        raise CheckpointError(f"--out {out}: the directory {parent} does not exist.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CheckpointError(f"--out {out}: the directory {parent} is not writable.")


def _recorded_model(run_dir: Path) -> str:
    """The program the fit in ``run_dir`` recorded, as PATH:FUNCTION, if it may be imported; else `ModelError`.

    Importing runs code, and a run directory is data that may come from anyone: the file is trusted only if
    it lies outside ``run_dir`` and its SHA-256 matches the one ``gmppl fit`` recorded (the manifest is
    checked first, so a corrupt meta.json is reported as such).
    """
    from gmppl._files import sha256_file
    from gmppl.io import verify

    meta = verify(run_dir) if (run_dir / "meta.json").is_file() else None
    if meta is None:
        raise ModelError(f"{run_dir} is not a saved fit (no meta.json).")
    cfg = meta.get("config", {})
    spec, path, digest = cfg.get("model_spec"), cfg.get("model_path"), cfg.get("model_sha256")
    ask = "Pass --model PATH:FUNCTION naming a program file you trust."
    if not isinstance(spec, str) or ":" not in spec:
        raise ModelError(f"{run_dir} does not record its model. {ask}")
    if not isinstance(path, str) or not isinstance(digest, str):
        raise ModelError(
            f"{run_dir} names the program {spec!r} but records no SHA-256 of it, so gmppl will not import it "
            f"(importing runs the file's code). {ask}"
        )
    file = Path(path)
    if not file.is_file():
        raise ModelError(f"{run_dir} names the program {path!r}, which does not exist. {ask}")
    if file.resolve().is_relative_to(run_dir.resolve()):
        raise ModelError(
            f"{run_dir} names a program file inside the run directory ({path}); gmppl never imports code that "
            f"comes with a run. {ask}"
        )
    if sha256_file(file) != digest:
        raise ModelError(
            f"{path} has changed since the fit (its SHA-256 differs from the one in {run_dir}/meta.json), so "
            f"gmppl will not import it. {ask}"
        )
    return f"{path}:{spec.rpartition(':')[2]}"


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="a directory written by `gmppl fit`")],
    model: Annotated[str | None, typer.Option(help="PATH:FUNCTION (default: the one the fit recorded)")] = None,
) -> None:
    """Summary tables (ArviZ) and PNG plots next to a saved fit."""
    import gmppl as gm
    from gmppl.report import write_report

    try:
        fit_ = gm.load(run_dir, load_model(model or _recorded_model(run_dir)))
    except GmpplError as e:
        _fail(e)
    test, test_npz = run_dir / "test_data.npy", run_dir / "test_data.npz"
    x_test: Any = None
    if test.is_file():
        x_test = np.load(test, allow_pickle=False)
    elif test_npz.is_file():
        with np.load(test_npz, allow_pickle=False) as z:
            x_test = {k: z[k] for k in z.files}
    paths = write_report(fit_, run_dir, x=_rows(x_test, slice(None, 200)) if x_test is not None else None)
    for name, path in paths.items():
        typer.echo(f"wrote {name}: {path}")


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="output directory")] = Path("demo-out"),
    engine: Annotated[str, typer.Option(help="pyro|numpyro")] = "pyro",
    data: Annotated[str, typer.Option(help="moons (with the 8-Gaussian ring) or digits")] = "moons",
    quick: Annotated[bool, typer.Option(help="a one-minute version")] = False,
    device: Annotated[str | None, typer.Option(help="cpu, cuda")] = None,
) -> None:
    """The showcase: one flow by four backends, a GAN by three divergences, a VAE and a diffusion model."""
    from gmppl.demo import run_demo

    path = run_demo(out, engine=engine, data=data, quick=quick, device=device)
    typer.echo(f"wrote {path}")


def main() -> None:  # pragma: no cover
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
