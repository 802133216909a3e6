"""ArviZ dimension names, shared by ``gmppl.arviz`` and the backends' ``arviz_groups`` hooks.

``obs`` indexes the examples, ``x_dim``/``x_dim_k`` the data's event axes, ``z_dim``/``<site>_dim_k``
a site's event axes; every sample dimension is ``(chain, draw)``. The backends import these names
from here rather than from ``gmppl.arviz``, which imports the backends.
"""

from __future__ import annotations

SAMPLE_DIMS = ("chain", "draw")


def x_dims(shape: tuple[int, ...]) -> list[str]:
    """The dims of an example of event shape ``shape``: ``x_dim`` for a vector, else ``x_dim_0, x_dim_1, ...``."""
    return [f"x_dim_{i}" for i in range(len(shape))] if len(shape) != 1 else ["x_dim"]


def site_dims(name: str, shape: tuple[int, ...], local: bool, latent: str | None) -> list[str]:
    """The dims of one draw of site ``name``: ``obs`` first for a per-example (``local``) site, whose
    leading axis of ``shape`` indexes the examples; the latent ``z`` gets ``z_dim``, other sites ``<site>_dim_k``."""
    rest = shape[1:] if local else shape
    stem = "z" if name == latent and local else name.replace("/", "_").replace(".", "_")
    event = [f"{stem}_dim_{i}" for i in range(len(rest))] if len(rest) != 1 else [f"{stem}_dim"]
    return ["obs", *event] if local else event
