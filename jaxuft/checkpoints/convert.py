"""Torch checkpoint -> jaxuft model directory (safetensors + JSON), without torch.

Dispatches on what the safely-read object is: a pickled mace-torch module, or a
SevenNet checkpoint dict.  The result is written atomically: on any error
nothing is left at the destination.
"""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path

from ..errors import CheckpointError
from .format import save_model, sha256_file
from .torch_pickle import read_checkpoint
from .validate import validate_model


def convert_to_memory(src: str | os.PathLike, head: str | None = None) -> tuple[dict, dict]:
    """Read and convert ``src``; returns ``(config, tree)`` with ``tree = {"params", "constants"}``.

    The result is validated (config schema with physical bounds, params against the config,
    all finite); any failure is a :class:`CheckpointError` naming ``src``."""
    obj = read_checkpoint(src)
    try:
        config, tree = _convert_object(src, obj, head)
    except CheckpointError as exc:
        if str(exc).startswith(str(src)):
            raise
        raise type(exc)(f"{src}: {exc}") from None
    except (ValueError, KeyError, TypeError, AttributeError, IndexError, ZeroDivisionError,
            OverflowError) as exc:  # a malformed model inside a well-formed pickle
        msg = str(exc).splitlines()[0] if str(exc) else ""
        raise CheckpointError(f"{src}: cannot convert this checkpoint: the model in it is malformed or of an "
                              f"unsupported layout ({type(exc).__name__}: {msg})") from None
    validate_model(config, tree, source=f"{src} (converted)")
    return config, tree


def _convert_object(src, obj, head):
    from . import mace

    if mace.looks_like_mace(obj):
        config, params, constants = mace.convert_mace(obj, head=head)
        return config, {"params": params, "constants": constants}
    try:
        from . import sevennet
    except ImportError:
        sevennet = None
    if sevennet is not None and sevennet.looks_like_sevennet(obj):
        config, params = sevennet.convert_sevennet(obj)[:2]
        return config, {"params": params}
    kind = getattr(obj, "qualname", type(obj).__name__)
    keys = list(obj.keys())[:8] if isinstance(obj, dict) else None
    raise CheckpointError(
        f"{src}: not a checkpoint jaxuft can convert (found {kind}{', keys ' + str(keys) if keys else ''}); "
        "supported: mace-torch .model files (ScaleShiftMACE/MACE) and SevenNet .pth checkpoints"
    )


def convert(src: str | os.PathLike, dest: str | os.PathLike, *, overwrite: bool = False, head: str | None = None) -> Path:
    """Convert ``src`` into the jaxuft model directory ``dest`` and return its path."""
    src = Path(src)
    if not src.is_file():
        raise CheckpointError(f"{src}: no such checkpoint file")
    config, tree = convert_to_memory(src, head=head)
    metadata = {
        "source_file": src.name,
        "source_sha256": sha256_file(src),
        "converted": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    save_model(dest, config, tree, metadata=metadata, overwrite=overwrite)
    return Path(dest)
