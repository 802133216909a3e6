"""gmppl's exceptions: every user error is a subclass of ``ValueError`` or ``TypeError``.

Each is raised before any training step and says what is wrong and what to do.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gmppl.result import Fit


class GmpplError(Exception):
    """Base of all gmppl errors."""


class DataError(GmpplError, ValueError):
    """The data cannot be used: NaN/inf, wrong shape or dtype, empty."""


class ModelError(GmpplError, ValueError):
    """The program lacks something gmppl needs (an observed site, a latent, parameters)."""


class NotSupported(GmpplError, TypeError):
    """The model or backend does not offer the requested capability (e.g. a density)."""


class BackendError(GmpplError, ValueError):
    """A backend was misconfigured or cannot fit this model."""


class UnknownName(GmpplError, ValueError):
    """A name (divergence, backend, engine) is not one gmppl knows."""


class DeviceError(GmpplError, ValueError):
    """The requested device is not available."""


class TrainingError(GmpplError, RuntimeError):
    """Training diverged (the loss turned NaN/inf) or a callback raised; the last good state is kept.

    ``gm.fit`` sets ``fit``: the ``Fit`` with the parameters of the last good step and the history so far.
    """

    fit: Fit | None = None


class CheckpointError(GmpplError, ValueError):
    """A saved fit is corrupt, from another model, or would execute code on load."""
