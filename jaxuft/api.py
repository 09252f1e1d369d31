"""Top-level entry points: load and convert models."""

from __future__ import annotations

import os
from pathlib import Path

from .potential import Potential


def load(path_or_name: str | os.PathLike, dtype: str = "float32", *, verify: bool = True) -> Potential:
    """Load a converted model directory, or a model-zoo name (see ``jaxuft models``).

    ``dtype`` is "float32" (default, fast) or "float64" (parity work; enables JAX x64).
    A torch checkpoint (``.model``/``.pth``) is converted in memory first, without torch.
    Every model is validated before use: its config against the family's schema (physical
    bounds), its params against the config (names, shapes, finite values) and, unless
    ``verify=False`` (CLI ``--no-verify``), its files against the sha256 manifest written
    when it was saved.  Failures raise :class:`~jaxuft.errors.CheckpointError` naming the file.
    """
    from .checkpoints.format import CONFIG_FILE, is_converted_model, load_model
    from .checkpoints.validate import validate_model

    p = Path(path_or_name)
    if p.is_dir():
        if not (p / CONFIG_FILE).exists() and is_converted_model(p / "model"):
            p = p / "model"  # a fine-tuning run directory: its best model
        config, tree = load_model(p, verify=verify)  # clear errors for a damaged config.json
        validate_model(config, tree, source=str(p / CONFIG_FILE))
        return potential_from_tree(config, tree, dtype)
    if p.exists():
        from .checkpoints.convert import convert_to_memory

        config, tree = convert_to_memory(p)
        return potential_from_tree(config, tree, dtype)
    try:
        from .checkpoints import zoo
    except ImportError:  # zoo not available
        zoo = None
    if zoo is not None and str(path_or_name) in zoo.MODELS:
        return load(zoo.fetch(str(path_or_name)), dtype=dtype, verify=verify)
    raise FileNotFoundError(
        f"{path_or_name!s} is neither an existing file/directory nor a known model name. "
        "Convert a torch checkpoint with `jaxuft convert SRC DEST`, or list named models with `jaxuft models`."
    )


def potential_from_tree(config: dict, tree: dict, dtype="float32") -> Potential:
    """A Potential from a loaded/converted tree: ``{"params": ..., "constants": ...}`` or bare params."""
    if "params" in tree and set(tree) <= {"params", "constants"}:
        return Potential(config, tree["params"], dtype=dtype, constants=tree.get("constants"))
    return Potential(config, tree, dtype=dtype)


def convert(src: str | os.PathLike, dest: str | os.PathLike, *, overwrite: bool = False, head: str | None = None) -> Path:
    """Convert a mace-torch ``.model`` or SevenNet ``.pth`` checkpoint to the jaxuft format (no torch needed)."""
    from .checkpoints.convert import convert as _convert

    return _convert(src, dest, overwrite=overwrite, head=head)
