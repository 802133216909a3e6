"""JAX's persistent compilation cache, turned on when gmppl first uses JAX.

A fresh process otherwise recompiles every jitted step (seconds on CPU for a small model); with the
cache a second process loads the executables from disk. The directory is ``$GMPPL_JAX_CACHE`` if set
(``0``/``off``/``false``/``no``/``none`` turn the cache off), else ``$XDG_CACHE_HOME/gmppl/jax`` or
``~/.cache/gmppl/jax``. A cache directory the user configured in JAX (``jax_compilation_cache_dir``,
``JAX_COMPILATION_CACHE_DIR``) is left alone, with its thresholds. JAX trusts its cache: do not point
``GMPPL_JAX_CACHE`` at a directory others can write to.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from pathlib import Path

ENV = "GMPPL_JAX_CACHE"
OFF = frozenset({"0", "off", "false", "no", "none"})
MAX_BYTES = 1 << 30  # least recently used entries are evicted past 1 GiB (when ``filelock`` is installed)

_lock = threading.Lock()
_done = False
_dir: Path | None = None


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/gmppl/jax``, or ``~/.cache/gmppl/jax``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "gmppl" / "jax"


def cache_dir_from_env() -> Path | None:
    """The directory ``$GMPPL_JAX_CACHE`` asks for: its path, the default when unset or empty, None when off."""
    value = os.environ.get(ENV, "").strip()
    if not value:
        return default_cache_dir()
    if value.lower() in OFF:
        return None
    return Path(value).expanduser()


def enable_jax_cache() -> Path | None:
    """Point JAX's persistent compilation cache at gmppl's directory, once per process; cache small programs too.

    Returns the directory gmppl configured, or None when the cache is off, the user configured JAX's own
    cache directory, or the directory cannot be created (then JAX runs as before, without a cache).
    """
    global _done, _dir
    with _lock:
        if _done:
            return _dir
        _done = True
        import jax

        if jax.config.jax_compilation_cache_dir:  # the user's own cache: not ours to change
            return None
        path = cache_dir_from_env()
        if path is None:
            return None
        try:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError:
            return None
        jax.config.update("jax_compilation_cache_dir", str(path))
        if jax.config.jax_persistent_cache_min_compile_time_secs == 1.0:  # JAX's default: only >1 s compiles
            jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        if jax.config.jax_persistent_cache_min_entry_size_bytes == 0:  # JAX's default: may be overridden
            jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)  # -1: no size floor
        if jax.config.jax_compilation_cache_max_size == -1 and importlib.util.find_spec("filelock") is not None:
            jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
        _dir = path
        return path
