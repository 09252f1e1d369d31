"""Multihead fine-tuning as mace-torch does it: one shared trunk, a new "ft" head for the new data, the "foundation" head kept on replay.

A model's *head* is its readout leaves plus its per-element buffers (E0s, scale, shift), as
the family's ``param_groups`` hook declares them (``jaxuft.finetune.params``); everything
else is the trunk.  During training the params are one flat dict: every trunk leaf once
under its own path, every head leaf once per head as ``"ft::PATH"`` / ``"foundation::PATH"``.
Each batch holds frames of one head only (new data: tag 0 -> "ft"; replay: tag 1 ->
"foundation"); the step selects that head's leaves with ``jnp.where`` on the batch's tag,
so one compiled step serves both heads and only the selected head gets gradients.

At the start both heads are the model's own head, except that the "ft" head takes the
refitted E0s (``e0s=lstsq/auto``) while the "foundation" head keeps the model's, so the
replay pseudo-labels (made with the unchanged model) are its exact predictions.

The result is a normal :class:`~jaxuft.potential.Potential` with the "ft" head merged in
(same module and dtype: MD compiles nothing new), and ``heads.safetensors`` beside the
saved model holding every head's leaves, so that ``evaluate(..., head="foundation")`` and
``jaxuft evaluate --head foundation`` score the other head.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import JaxuftError
from .params import ParamGroups, _under_any, flatten

#: the heads, in tag order: tag 0 (new data) trains "ft", tag 1 (replay) trains "foundation"
HEADS = ("ft", "foundation")
SEP = "::"
HEADS_FILE = "heads.safetensors"


class HeadError(JaxuftError, ValueError):
    """A head cannot be found or applied (no heads file, unknown head name, mismatched leaves)."""


def head_leaves(groups: ParamGroups, params) -> tuple[str, ...]:
    """Leaf paths of the head: readouts plus per-element buffers (E0s, scale, shift); not avg_num_neighbors."""
    paths, _, _ = flatten(params)
    out = tuple(p for p in paths if _under_any(p, groups.readouts)
                or (p in groups.buffers and "avg_num_neighbors" not in p))
    if not out:
        raise HeadError("multihead: the model declares no readout or per-element buffer leaves (its param_groups "
                        "hook gives none), so it has no head to duplicate")
    return out


def head_key(head: str, path: str) -> str:
    return f"{head}{SEP}{path}"


@dataclass(frozen=True)
class MultiheadSplit:
    """Trainable/frozen flat dicts of a shared trunk plus one copy of the head leaves per head (hashable)."""

    paths: tuple[str, ...]
    treedef: Any
    head_paths: tuple[str, ...]
    trainable_paths: tuple[str, ...]  # keys of the flat dict ("ft::readout_out", trunk paths...)

    @classmethod
    def create(cls, params, trainable_base: tuple[str, ...] | list[str], head_paths: tuple[str, ...]):
        paths, _, treedef = flatten(params)
        hs, ts = set(head_paths), set(trainable_base)
        keys = []
        for p in paths:
            if p not in ts:
                continue
            keys += [head_key(h, p) for h in HEADS] if p in hs else [p]
        return cls(tuple(paths), treedef, tuple(p for p in paths if p in hs), tuple(keys))

    @property
    def keys(self) -> tuple[str, ...]:
        hs = set(self.head_paths)
        return tuple(k for p in self.paths for k in ([head_key(h, p) for h in HEADS] if p in hs else [p]))

    def expand(self, params_ft, params_foundation) -> dict:
        """The flat dict: trunk and "ft" head from ``params_ft``, "foundation" head from ``params_foundation``."""
        _, a, _ = flatten(params_ft)
        _, b, _ = flatten(params_foundation)
        hs = set(self.head_paths)
        out = {}
        for p, x, y in zip(self.paths, a, b):
            if p in hs:
                out[head_key("ft", p)] = x
                out[head_key("foundation", p)] = y
            else:
                out[p] = x
        return out

    def split(self, flat: dict) -> tuple[dict, dict]:
        ts = set(self.trainable_paths)
        return ({k: v for k, v in flat.items() if k in ts}, {k: v for k, v in flat.items() if k not in ts})

    def merge(self, trainable: dict, frozen: dict, head=0):
        """The model's params tree with head ``head`` (index into HEADS, a name, or a traced int) merged in."""
        get = lambda k: trainable[k] if k in trainable else frozen[k]
        if isinstance(head, str):
            head = HEADS.index(head)
        hs = set(self.head_paths)
        leaves = []
        for p in self.paths:
            if p not in hs:
                leaves.append(get(p))
            elif isinstance(head, (int, np.integer)):
                leaves.append(get(head_key(HEADS[int(head)], p)))
            else:
                leaves.append(jnp.where(head == 0, get(head_key("ft", p)), get(head_key("foundation", p))))
        return jax.tree_util.tree_unflatten(self.treedef, leaves)

    def heads(self, trainable: dict, frozen: dict) -> dict[str, dict[str, np.ndarray]]:
        """``{head: {path: array}}`` of the head leaves."""
        get = lambda k: trainable[k] if k in trainable else frozen[k]
        return {h: {p: np.asarray(get(head_key(h, p))) for p in self.head_paths} for h in HEADS}


def epoch_batches_by_head(samples, tags, plan, key) -> list[tuple[int, list[int]]]:
    """As :func:`jaxuft.finetune.data.epoch_batches`, but every batch holds frames of one tag (head) only."""
    from .data import batch_indices

    k1, k2 = jax.random.split(key)
    perm = np.asarray(jax.random.permutation(k1, len(samples)))
    chunks = []
    for t in sorted(set(int(x) for x in tags)):
        chunks += batch_indices(samples, plan, [i for i in perm if int(tags[i]) == t])
    border = np.asarray(jax.random.permutation(k2, len(chunks)))
    return [chunks[i] for i in border]


# ---- heads on disk ---------------------------------------------------------------------
def save_heads(path: str | os.PathLike, heads: dict[str, dict[str, np.ndarray]], meta: dict | None = None) -> Path:
    """Write ``{head: {path: array}}`` (safetensors, atomic) to ``path``."""
    import json

    from safetensors.numpy import save as st_save

    from ..fileio import atomic_write_bytes

    arrays = {head_key(h, p): np.ascontiguousarray(a) for h, leaves in heads.items() for p, a in leaves.items()}
    header = {"format": "jaxuft-heads", "heads": json.dumps(list(heads)), "meta": json.dumps(meta or {})}
    path = Path(path)
    atomic_write_bytes(path, st_save(arrays, metadata=header))
    return path


def load_heads(path: str | os.PathLike) -> dict[str, dict[str, np.ndarray]]:
    """``{head: {path: array}}`` from a heads file, or from a model directory / fine-tune output holding one."""
    import json

    from safetensors import safe_open

    p = Path(path)
    for cand in (p, p / HEADS_FILE, p / "model" / HEADS_FILE):
        if cand.is_file():
            p = cand
            break
    else:
        raise HeadError(f"no {HEADS_FILE} at {path} (nor in its model/ folder): only multihead fine-tunes "
                        "(multihead=True, --multihead) save heads")
    with safe_open(str(p), framework="np") as f:
        header = f.metadata() or {}
        if header.get("format") != "jaxuft-heads":
            raise HeadError(f"{p} is not a jaxuft heads file")
        out: dict[str, dict[str, np.ndarray]] = {h: {} for h in json.loads(header["heads"])}
        for k in f.keys():
            h, _, leaf = k.partition(SEP)
            out[h][leaf] = f.get_tensor(k)
    return out


def with_head(potential, heads: dict[str, dict[str, np.ndarray]], head: str):
    """``potential`` with the leaves of ``head`` (same module and dtype)."""
    if head not in heads:
        raise HeadError(f"unknown head {head!r}; this model has heads {sorted(heads)}")
    paths, leaves, treedef = flatten(potential.params)
    leaf = heads[head]
    missing = [p for p in leaf if p not in paths]
    if missing:
        raise HeadError(f"head {head!r} has leaves {missing[:5]} that this model lacks: the heads file belongs to "
                        "another architecture")
    new = []
    for p, x in zip(paths, leaves):
        if p in leaf:
            if np.shape(leaf[p]) != np.shape(x):
                raise HeadError(f"head {head!r}: leaf {p} has shape {np.shape(leaf[p])}, the model {np.shape(x)}")
            new.append(jnp.asarray(leaf[p], dtype=jnp.asarray(x).dtype))
        else:
            new.append(x)
    return potential.with_params(jax.tree_util.tree_unflatten(treedef, new))
