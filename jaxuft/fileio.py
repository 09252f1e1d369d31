"""Atomic file writes (temp file in the same folder, fsync, rename) and strict JSON.

Every file jaxuft writes goes through here, so a crash, ``kill -9`` or a full disk leaves
either the old file or the new one, never a torn one::

    atomic_write_json(run / "summary.json", summary)     # NaN/inf -> null (strict JSON)
    atomic_write_bytes(run / "state.npz", blob)
    with atomic_open(run / "frames.extxyz", "w") as f:   # for writers that want a file object
        ase.io.write(f, frames, format="extxyz")
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

__all__ = [
    "atomic_open", "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "atomic_save_npz",
    "json_clean", "json_default", "fsync_dir",
]


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename inside ``path`` durable (best effort: not every filesystem allows it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", durable: bool = True) -> Iterator[io.IOBase]:
    """Open a temporary file beside ``path``; on a clean exit it replaces ``path`` atomically.

    On an exception (a full disk included) the temporary file is removed and ``path`` is untouched.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open supports modes 'w' and 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, durable: bool = True) -> Path:
    with atomic_open(path, "wb", durable=durable) as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, durable: bool = True) -> Path:
    with atomic_open(path, "w", durable=durable) as f:
        f.write(text)
    return Path(path)


def json_clean(obj: Any) -> Any:
    """A copy of ``obj`` that strict JSON accepts: non-finite floats -> None, numpy -> Python."""
    if isinstance(obj, dict):
        return {str(k): json_clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_clean(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer, np.bool_)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, os.PathLike):
        return os.fspath(o)
    if hasattr(o, "model_dump"):  # pydantic models
        return o.model_dump(mode="json")
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def atomic_write_json(path: str | os.PathLike, obj: Any, durable: bool = True) -> Path:
    """Strict JSON (NaN/inf written as null), indented, replaced atomically."""
    text = json.dumps(json_clean(obj), indent=2, default=json_default, allow_nan=False) + "\n"
    return atomic_write_text(path, text, durable=durable)


def atomic_save_npz(path: str | os.PathLike, durable: bool = True, **arrays) -> Path:
    """``np.savez`` to ``path`` atomically (the name is kept exactly: no ``.npz`` appended)."""
    with atomic_open(path, "wb", durable=durable) as f:
        np.savez(f, **arrays)
    return Path(path)
