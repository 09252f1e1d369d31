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
from pathlib import Path

import jax
import numpy as np

from ..errors import JaxuftError
from ..fileio import atomic_write_bytes, atomic_write_json, atomic_write_text, json_clean  # noqa: F401
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
    atomic_write_bytes(path, blob)
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


def write_json_atomic(path: str | os.PathLike, obj) -> Path:
    """Strict JSON (NaN/inf written as null), replaced atomically (:func:`jaxuft.fileio.atomic_write_json`)."""
    return atomic_write_json(path, obj)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_text(path, text)
