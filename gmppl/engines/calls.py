"""How gmppl calls a user's program: the observed data, the inputs and ``n``, each by keyword.

A program is called as ``model(<observed>=x, **inputs)`` to condition on data and as
``model(<observed>=None, **inputs, n=k)`` to generate; ``n`` is passed only to a program whose
signature names it (with inputs, the number of rows says how many). The data go under the observed
site's name, or under ``x`` for a program that names its data argument ``x`` (Pyro's examples call
the site ``"obs"`` and the argument ``x``). Everything here is engine-neutral: the signature is read
with ``inspect`` before the program runs, so a mismatch gets a clear error instead of a traceback
from inside the program.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from gmppl.errors import ModelError


@dataclass(frozen=True)
class Call:
    """The keywords a program is called with: its data argument, its inputs, and whether it takes ``n``."""

    data: str = "x"
    inputs: tuple[str, ...] = ()
    takes_n: bool = True
    others: tuple[str, ...] = ()  # parameters gmppl leaves at their defaults

    def hint(self) -> str:
        """A sentence for errors from running the program: the parameters it was not given."""
        if not self.others:
            return ""
        names = ", ".join(map(repr, self.others))
        return (
            f" The program also takes {names}, which gmppl left at the default; if it needs them, pass the data as a "
            f"mapping with them as inputs, e.g. {{{self.data!r}: x, {self.others[0]!r}: ...}}."
        )

    def kwargs(self, x: Any = None, n: int | None = None, inputs: Mapping[str, Any] | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {self.data: x, **(inputs or {})}
        if self.takes_n:
            out["n"] = n if x is None else None
        return out

    def bind(self, model: Callable) -> Callable:
        """``model`` as ``fn(x=None, n=None, **inputs)``: the form every gmppl handler, guide and sampler uses."""
        if self.data == "x" and not self.inputs and self.takes_n:
            return model

        def program(x: Any = None, n: int | None = None, **inputs: Any) -> Any:
            return model(**self.kwargs(x, n, inputs))

        program.__name__ = getattr(model, "__name__", "program")
        return program


def make_call(model: Callable, observed: str = "x", inputs: tuple[str, ...] = ()) -> Call:
    """Read ``model``'s signature and say how to call it, or raise `ModelError` naming what does not fit.

    Callables whose signature cannot be read (some builtins and extension types) are called the
    default way, ``model(x=..., n=...)``, with the inputs by keyword.
    """
    try:
        sig = inspect.signature(model)
    except (TypeError, ValueError):
        return Call(data="x", inputs=tuple(inputs), takes_n=True)
    params = sig.parameters
    kinds = inspect.Parameter
    named = {k for k, p in params.items() if p.kind in (kinds.POSITIONAL_OR_KEYWORD, kinds.KEYWORD_ONLY)}
    any_kw = any(p.kind is kinds.VAR_KEYWORD for p in params.values())
    if observed in named or (any_kw and "x" not in named):
        data = observed
    elif "x" in named:
        data = "x"
    else:
        data = ""
    takes_n = "n" in named
    problems = []
    if not data:
        problems.append(
            "it has no parameter for the data: name one "
            + (f"{observed!r} (the observed site's name) or 'x'" if observed != "x" else "'x'")
            + (
                " (a positional-only parameter cannot be passed by keyword)"
                if any(p.kind is kinds.POSITIONAL_ONLY for p in params.values())
                else ""
            )
        )
    unknown = [k for k in inputs if k not in named and not any_kw]
    if unknown:
        problems.append(
            f"the data hold inputs {unknown} that it does not take (add them as keyword parameters, or leave them "
            "out of the data)"
        )
    given = {data, *inputs, "n"}
    required = [
        k
        for k, p in params.items()
        if k not in given
        and p.default is kinds.empty
        and p.kind in (kinds.POSITIONAL_ONLY, kinds.POSITIONAL_OR_KEYWORD, kinds.KEYWORD_ONLY)
    ]
    if required:
        problems.append(
            f"it requires {required}, which the data do not give: pass data as a mapping with them as inputs, e.g. "
            f"{{{observed!r}: x, {required[0]!r}: ...}}, bind constants with functools.partial, or give them defaults"
        )
    if problems:
        name = getattr(model, "__name__", None) or getattr(getattr(model, "func", None), "__name__", None) or "model"
        example = ", ".join([f"{observed}=None", *(f"{k}=None" for k in inputs)] + ([] if inputs else ["n=None"]))
        raise ModelError(
            f"the program {name}{sig} cannot be called the way gmppl calls it: {'; '.join(problems)}. gmppl calls "
            f"it by keyword with the data (None to generate), each input, and n (the number of draws) if it takes "
            f"n, e.g. model({example})."
        )
    others = tuple(
        k for k, p in params.items() if k not in given and p.kind in (kinds.POSITIONAL_OR_KEYWORD, kinds.KEYWORD_ONLY)
    )
    return Call(data=data, inputs=tuple(inputs), takes_n=takes_n, others=others)
