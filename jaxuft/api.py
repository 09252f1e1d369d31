"""Top-level entry points: load and convert models."""

from __future__ import annotations

import os
from pathlib import Path

from .potential import Potential


def load(path_or_name: str | os.PathLike, dtype: str = "float32") -> Potential:
    """Load a converted model directory, or a model-zoo name (see ``jaxuft models``).

    ``dtype`` is "float32" (default, fast) or "float64" (parity work; enables JAX x64).
    A torch checkpoint (``.model``/``.pth``) is converted in memory first, without torch.
    """
    from .checkpoints.format import is_converted_model, load_model

    p = Path(path_or_name)
    if p.exists() and is_converted_model(p):
        config, params = load_model(p)
        return Potential(config, params, dtype=dtype)
    if p.exists():
        from .checkpoints.convert import convert_to_memory

        config, params = convert_to_memory(p)
        return Potential(config, params, dtype=dtype)
    try:
        from .checkpoints import zoo
    except ImportError:  # zoo not available
        zoo = None
    if zoo is not None and str(path_or_name) in zoo.MODELS:
        return load(zoo.fetch(str(path_or_name)), dtype=dtype)
    raise FileNotFoundError(
        f"{path_or_name!s} is neither an existing file/directory nor a known model name. "
        "Convert a torch checkpoint with `jaxuft convert SRC DEST`, or list named models with `jaxuft models`."
    )


def convert(src: str | os.PathLike, dest: str | os.PathLike, *, overwrite: bool = False, head: str | None = None) -> Path:
    """Convert a mace-torch ``.model`` or SevenNet ``.pth`` checkpoint to the jaxuft format (no torch needed)."""
    from .checkpoints.convert import convert as _convert

    return _convert(src, dest, overwrite=overwrite, head=head)
