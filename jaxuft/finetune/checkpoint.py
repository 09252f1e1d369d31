"""Training checkpoints: one safetensors file, written atomically, no pickle.

The file holds every array of the training state under path-like names
(``trainable/<leaf>``, ``opt_state/<...>``, ``ema/<leaf>``, ``best/<leaf>``, ``rng``...)
and, in the safetensors header metadata, a JSON document with everything else
(epoch, step, schedule and early-stopping state, metric history, config, data
fingerprints).  It is written to a temporary file, flushed, fsynced and moved over
the previous checkpoint with ``os.replace``, so a crash leaves either the old or
the new checkpoint, never a torn one.

Arrays are restored into a *template* tree (built from the same config), and
every name, shape and dtype must match: a checkpoint of another run fails loudly.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import jax
import numpy as np

from ..errors import JaxuftError
from .params import path_to_str

FORMAT = "jaxuft-finetune-checkpoint"
VERSION = 1


class CheckpointMismatch(JaxuftError, ValueError):
    """A checkpoint does not belong to this run (other data, model or settings)."""


def tree_to_arrays(prefix: str, tree) -> dict[str, np.ndarray]:
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        out[f"{prefix}/{path_to_str(path)}" if path else prefix] = np.asarray(leaf, order="C")
    return out


def arrays_to_tree(prefix: str, template, arrays: dict):
    with_paths, treedef = jax.tree_util.tree_flatten_with_path(template)
    leaves = []
    for path, t in with_paths:
        name = f"{prefix}/{path_to_str(path)}" if path else prefix
        if name not in arrays:
            raise CheckpointMismatch(f"checkpoint has no array {name!r}; it was written by another run setup")
        a = arrays[name]
        t = np.asarray(t)
        if a.shape != t.shape or a.dtype != t.dtype:
            raise CheckpointMismatch(
                f"checkpoint array {name!r} is {a.dtype}{list(a.shape)}, this run expects {t.dtype}{list(t.shape)}"
            )
        leaves.append(jax.numpy.asarray(a))
    return jax.tree_util.tree_unflatten(treedef, leaves)


def save(path: str | os.PathLike, arrays: dict[str, np.ndarray], meta: dict) -> Path:
    """Write ``arrays`` + JSON ``meta`` to ``path`` atomically."""
    from safetensors.numpy import save as st_save

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {"format": FORMAT, "version": str(VERSION), "meta": json.dumps(meta, allow_nan=True)}
    blob = st_save({k: np.asarray(v, order="C") for k, v in arrays.items()}, metadata=header)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
    return path


def load(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict]:
    """``(arrays, meta)`` of a checkpoint written by :func:`save`."""
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    with safe_open(str(path), framework="np") as f:
        header = f.metadata() or {}
        if header.get("format") != FORMAT:
            raise CheckpointMismatch(f"{path} is not a jaxuft fine-tuning checkpoint")
        arrays = {k: f.get_tensor(k) for k in f.keys()}
    return arrays, json.loads(header["meta"])


def json_clean(obj):
    """A copy of ``obj`` with non-finite floats as None (strict JSON) and numpy scalars as Python."""
    if isinstance(obj, dict):
        return {k: json_clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_clean(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def write_json_atomic(path: str | os.PathLike, obj) -> Path:
    """Strict JSON (NaN/inf written as null), replaced atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(json_clean(obj), f, indent=2, default=_json_default, allow_nan=False)
        f.write("\n")
    os.replace(tmp, path)
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
    return path


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
