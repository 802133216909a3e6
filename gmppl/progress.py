"""Progress bar with loss and steps/s on interactive terminals and in Jupyter (``tqdm.auto``); quiet under CI or
``progress=False``."""

from __future__ import annotations

import logging
import os
import sys
import time

log = logging.getLogger("gmppl")


def _in_notebook() -> bool:
    """Whether this runs in a Jupyter kernel (stderr is no terminal there, but tqdm.auto draws a widget)."""
    shell = sys.modules.get("IPython")
    ip = getattr(shell, "get_ipython", lambda: None)() if shell else None
    return ip is not None and type(ip).__name__ == "ZMQInteractiveShell"


class Progress:
    """A tqdm bar when ``enabled`` and stderr is a terminal (and not under CI); log lines otherwise."""

    def __init__(self, total: int, *, enabled: bool = True, desc: str = "fit"):
        self.total, self.desc, self.start = total, desc, time.perf_counter()
        interactive = (sys.stderr.isatty() or _in_notebook()) and not os.environ.get("CI")
        self.bar = None
        if enabled and interactive:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="step", leave=False)
        self.last = 0

    def update(self, step: int, loss: float) -> None:
        if self.bar is not None:
            self.bar.update(step - self.last)
            self.bar.set_postfix(loss=f"{loss:.4g}")
        self.last = step

    def close(self) -> float:
        """Close the bar; returns the elapsed seconds."""
        elapsed = time.perf_counter() - self.start
        if self.bar is not None:
            self.bar.close()
        log.info("%s: %d steps in %.1fs (%.0f steps/s)", self.desc, self.last, elapsed, self.last / max(elapsed, 1e-9))
        return elapsed
