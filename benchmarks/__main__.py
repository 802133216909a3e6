"""``python -m benchmarks [--quick] [NAME ...]``: run every ``benchmarks/bench_*.py`` and print its table
(cold process and warm steady state of every case, each as a ratio to its baseline: ``benchmarks/harness.py``)."""

from __future__ import annotations

import importlib
import pkgutil
import platform
import sys
import time
from pathlib import Path

import benchmarks
from benchmarks.harness import COLD_REPEATS, run_cases


def main(argv: list[str]) -> int:
    quick = "--quick" in argv
    names = [a for a in argv if not a.startswith("-")]
    here = Path(benchmarks.__file__).parent
    print(f"machine: {platform.machine()} {platform.processor() or ''}, python {platform.python_version()}")
    for mod in sorted(m.name for m in pkgutil.iter_modules([str(here)]) if m.name.startswith("bench_")):
        if names and not any(n in mod for n in names):
            continue
        t0 = time.perf_counter()
        module = importlib.import_module(f"benchmarks.{mod}")
        if hasattr(module, "run"):  # measures its own way (bench_coldstart: a fresh process per measurement)
            module.run(quick)
        else:
            run_cases(module.TITLE, module.cases(quick), module=mod, quick=quick, cold_repeats=COLD_REPEATS)
        print(f"\n({mod}: {time.perf_counter() - t0:.0f} s)\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
