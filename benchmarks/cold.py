"""``python -m benchmarks.cold MODULE CASE STEPS``: one case of ``benchmarks.MODULE`` in this (fresh) process.

Imports the module, builds its cases (``cases(quick)``, quick when ``GMPPL_BENCH_QUICK`` is set, as the parent
run), looks the case up by name and runs it for ``STEPS`` steps; an empty CASE builds the cases and runs none
(the part of every cold process that is not the case's). Prints ``{"setup_s", "run_s"}`` as JSON: the seconds
to build the cases and to run the case. The harness times the whole process (``harness.cold_process``).
"""

from __future__ import annotations

import json
import os
import sys
import time


def main(argv: list[str]) -> int:
    module_name, case_name, steps = argv[0], argv[1], int(argv[2])
    import importlib

    t0 = time.perf_counter()
    module = importlib.import_module(f"benchmarks.{module_name}")
    cases = module.cases(bool(os.environ.get("GMPPL_BENCH_QUICK")))
    setup = time.perf_counter() - t0
    run = 0.0
    if case_name:
        (case,) = [c for c in cases if c.name == case_name]
        t0 = time.perf_counter()
        case.direct(steps)
        run = time.perf_counter() - t0
    print(json.dumps({"setup_s": setup, "run_s": run}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
