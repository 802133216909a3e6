"""The ``gmppl`` command: ``fit``, ``sample``, ``report`` and ``demo``."""

from __future__ import annotations

import importlib.util
import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from gmppl.errors import GmpplError, ModelError

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
) -> None:
    """Fit MODEL to DATA with BACKEND and save the fit (weights, metadata, DataTree) to OUT."""
    import gmppl as gm
    from gmppl.datasets import load_arrays

    try:
        fn = load_model(model)
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
        )
    except GmpplError as e:
        _fail(e)
    result.config["model_spec"] = model
    result.save(out)
    if isinstance(x_test, dict):
        np.savez(out / "test_data.npz", **x_test)
    elif x_test is not None:
        np.save(out / "test_data.npy", x_test, allow_pickle=False)
    tree = result.to_arviz(_rows(x_test, slice(None, 200)) if x_test is not None else None)
    tree.to_netcdf(out / "datatree.nc")
    typer.echo(f"saved {result!r} to {out}")


@app.command()
def sample(
    run_dir: Annotated[Path, typer.Argument(help="a directory written by `gmppl fit`")],
    n: Annotated[int, typer.Option("-n", help="number of samples")] = 1000,
    seed: int = 0,
    model: Annotated[str | None, typer.Option(help="PATH:FUNCTION (default: the one the fit recorded)")] = None,
    inputs: Annotated[
        Path | None, typer.Option(help="FILE.npz of inputs for a conditional model: one sample per row")
    ] = None,
    out: Annotated[Path, typer.Option(help=".npy file")] = Path("samples.npy"),
) -> None:
    """Draw N samples (or one per row of --inputs) from a saved fit into an .npy file."""
    import gmppl as gm
    from gmppl._data import to_numpy
    from gmppl.datasets import load_arrays

    try:
        fit_ = gm.load(run_dir, load_model(model or _recorded_model(run_dir)))
        rows = None
        if inputs is not None:
            given = load_arrays(str(inputs))
            rows = given if isinstance(given, dict) else {fit_.input_names[0]: given} if fit_.input_names else None
        x = to_numpy(fit_.sample(None if rows else n, seed=seed, inputs=rows))
    except GmpplError as e:
        _fail(e)
    np.save(out, x, allow_pickle=False)
    typer.echo(f"wrote {len(x)} samples to {out}")


def _recorded_model(run_dir: Path) -> str:
    meta = run_dir / "meta.json"
    if not meta.is_file():
        raise ModelError(f"{run_dir} is not a saved fit (no meta.json).")
    spec = json.loads(meta.read_text()).get("config", {}).get("model_spec")
    if not spec:
        raise ModelError(f"{run_dir} does not record its model; pass --model PATH:FUNCTION.")
    return spec


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
