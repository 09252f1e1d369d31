"""Parameter paths, parameter groups and the choice of what trains.

Params are nested dicts (Flax).  Every leaf has a path string ``"a/b/c"``.  A
fine-tune trains a *subset* of leaves, chosen by a freeze spec:

=====================  =====================================================
``"none"``             every leaf trains, except buffers (E0s, scale/shift,
                       average neighbour counts: constants in mace-torch)
``"readouts"``         readout heads only (alias ``"trunk"``: freeze the trunk)
``"layers:K"``         readouts plus the last K interaction layers
``"linear-readouts"``  the readout leaves in which the energy is affine
                       (exact for the frozen-trunk cache, see ``trunk.py``)
``"linear"``           every non-buffer leaf in which the energy is affine
``"train:REGEX"``      leaves whose path matches REGEX (``re.search``)
``"freeze:REGEX"``     every non-buffer leaf except those matching REGEX
=====================  =====================================================

Model families describe their layout with an optional hook in their module
(``jaxuft/models/<family>.py``)::

    def param_groups(config: dict, params: dict) -> dict:
        return {
            "readouts": ["readouts_0", "readouts_1"],          # path prefixes
            "layers": [["interactions_0", "products_0"],       # one list per interaction
                       ["interactions_1", "products_1"]],      # layer, first to last
            "linear_readouts": ["readouts_0/linear/w", ...],   # leaves the energy is affine in
            "e0": "atomic_energies",                           # (n_species,) eV leaf
            "buffers": ["scale_shift/scale", ...],             # never trained by default
        }

Every key is optional; missing keys fall back to the naming heuristics below
(flax names list members ``name_0``, ``name_1``...).
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import jax
import numpy as np

from ..errors import JaxuftError

_LAYER_RE = re.compile(r"(interaction|product|conv|layer|block|message|update)s?[_.]?(?P<idx>\d+)", re.I)
_READOUT_RE = re.compile(r"readout|reduce_.*energy|reduce_input_to_hidden", re.I)
_E0_NAMES = {"atomic_energies", "e0", "e0s", "atomic_energy"}
_BUFFER_NAMES = {"scale", "shift", "avg_num_neighbors", "scale_shift"} | _E0_NAMES


class FreezeError(JaxuftError, ValueError):
    """A freeze spec selects nothing, or cannot be understood."""


# ---- paths -----------------------------------------------------------------------------
def _key_str(k) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def path_to_str(keypath) -> str:
    return "/".join(_key_str(k) for k in keypath)


def flatten(params) -> tuple[list[str], list[Any], Any]:
    """``(paths, leaves, treedef)`` of a params pytree, in tree order."""
    with_paths, treedef = jax.tree_util.tree_flatten_with_path(params)
    paths = [path_to_str(p) for p, _ in with_paths]
    leaves = [leaf for _, leaf in with_paths]
    return paths, leaves, treedef


@dataclass(frozen=True)
class ParamSplit:
    """Splits a params tree into trainable and frozen flat dicts and merges them back.

    ``trainable``/``frozen`` are ``{path: array}`` dicts (valid pytrees for optax).
    """

    paths: tuple[str, ...]
    treedef: Any
    trainable_paths: tuple[str, ...]

    @classmethod
    def create(cls, params, trainable_paths: Iterable[str]) -> "ParamSplit":
        paths, _, treedef = flatten(params)
        tp = tuple(p for p in paths if p in set(trainable_paths))
        return cls(tuple(paths), treedef, tp)

    def split(self, params) -> tuple[dict, dict]:
        _, leaves, _ = flatten(params)
        trainable_set = set(self.trainable_paths)
        train = {p: x for p, x in zip(self.paths, leaves) if p in trainable_set}
        frozen = {p: x for p, x in zip(self.paths, leaves) if p not in trainable_set}
        return train, frozen

    def merge(self, trainable: dict, frozen: dict):
        leaves = [trainable[p] if p in trainable else frozen[p] for p in self.paths]
        return jax.tree_util.tree_unflatten(self.treedef, leaves)


def n_scalars(tree) -> int:
    return int(sum(np.size(x) for x in jax.tree_util.tree_leaves(tree)))


# ---- groups ----------------------------------------------------------------------------
@dataclass(frozen=True)
class ParamGroups:
    """What a model's params are: readouts, interaction layers, E0 leaf, buffers."""

    readouts: tuple[str, ...] = ()
    layers: tuple[tuple[str, ...], ...] = ()
    linear_readouts: tuple[str, ...] | None = None
    e0: str | None = None
    buffers: tuple[str, ...] = ()
    source: str = "heuristic"
    extra: dict = field(default_factory=dict)


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix.rstrip("/") + "/")


def _under_any(path: str, prefixes: Iterable[str]) -> bool:
    return any(_under(path, p) for p in prefixes)


def _family_hook(config: dict):
    from ..models import FAMILIES

    spec = FAMILIES.get(config.get("family"))
    if spec is None:
        return None
    try:
        mod = importlib.import_module(spec.split(":")[0])
    except ImportError:
        return None
    return getattr(mod, "param_groups", None)


def heuristic_groups(params, n_species: int | None = None) -> ParamGroups:
    """Readouts, layers, E0 leaf and buffers guessed from leaf names."""
    paths, leaves, _ = flatten(params)
    readouts: list[str] = []
    layers: dict[int, set[str]] = {}
    e0 = None
    buffers = []
    for path, leaf in zip(paths, leaves):
        parts = path.split("/")
        for i, part in enumerate(parts):
            if _READOUT_RE.search(part):
                pre = "/".join(parts[: i + 1])
                if pre not in readouts:
                    readouts.append(pre)
                break
        else:
            for i, part in enumerate(parts):
                m = _LAYER_RE.search(part)
                if m:
                    layers.setdefault(int(m.group("idx")), set()).add("/".join(parts[: i + 1]))
                    break
        last = parts[-1]
        if last in _E0_NAMES and e0 is None:
            shape = np.shape(leaf)
            if n_species is None or (len(shape) >= 1 and shape[-1] == n_species):
                e0 = path
        if last in _BUFFER_NAMES or any(p in _BUFFER_NAMES for p in parts[:-1]):
            buffers.append(path)
    if e0 is not None and e0 not in buffers:
        buffers.append(e0)
    return ParamGroups(
        readouts=tuple(readouts),
        layers=tuple(tuple(sorted(layers[k])) for k in sorted(layers)),
        e0=e0,
        buffers=tuple(buffers),
    )


def param_groups(config: dict, params) -> ParamGroups:
    """The family's ``param_groups`` hook where it has one, heuristics for the rest."""
    n_species = len(config.get("atomic_numbers", ())) or None
    guess = heuristic_groups(params, n_species)
    hook = _family_hook(config)
    if hook is None:
        return guess
    d = dict(hook(config, params) or {})
    layers = d.get("layers")
    e0 = d.get("e0", guess.e0)
    buffers = tuple(d.get("buffers", guess.buffers))
    if e0 is not None and e0 not in buffers:
        buffers = buffers + (e0,)
    return ParamGroups(
        readouts=tuple(d.get("readouts", guess.readouts)),
        layers=tuple(tuple(x) for x in layers) if layers is not None else guess.layers,
        linear_readouts=tuple(d["linear_readouts"]) if d.get("linear_readouts") is not None else None,
        e0=e0,
        buffers=buffers,
        source="family",
    )


# ---- selection -------------------------------------------------------------------------
FREEZE_HELP = (
    "none | readouts (alias trunk) | layers:K | linear-readouts | linear | train:REGEX | freeze:REGEX"
)


def select_trainable(spec: str, config: dict, params, groups: ParamGroups | None = None) -> list[str]:
    """Leaf paths that train under freeze ``spec`` (see module docstring).

    ``linear-readouts`` returns the family's list, or all readout leaves when the
    family gives none; ``linear`` returns every non-buffer leaf (the caller narrows
    both with :func:`jaxuft.finetune.trunk.affine_leaves`).
    """
    groups = groups or param_groups(config, params)
    paths, _, _ = flatten(params)
    buffers = set(groups.buffers)
    spec = (spec or "none").strip()
    kind, _, arg = spec.partition(":")
    kind = kind.lower()
    if kind in ("none", "all", ""):
        chosen = [p for p in paths if p not in buffers]
    elif kind in ("readouts", "readout", "trunk", "heads"):
        if not groups.readouts:
            raise FreezeError(
                f"freeze spec {spec!r}: no readout parameters found (no path contains 'readout' and "
                f"the model family gives no param_groups hook). Leaves: {_short(paths)}. "
                "Use train:REGEX to name the leaves to train."
            )
        chosen = [p for p in paths if _under_any(p, groups.readouts) and p not in buffers]
    elif kind in ("layers", "last"):
        try:
            k = int(arg)
        except ValueError:
            raise FreezeError(f"freeze spec {spec!r}: expected layers:K with an integer K") from None
        if k < 0:
            raise FreezeError(f"freeze spec {spec!r}: K must be >= 0")
        if k > len(groups.layers):
            raise FreezeError(
                f"freeze spec {spec!r}: the model has {len(groups.layers)} interaction layer(s) "
                f"({[list(g) for g in groups.layers]})"
            )
        prefixes = list(groups.readouts) + [p for g in groups.layers[len(groups.layers) - k :] for p in g]
        chosen = [p for p in paths if _under_any(p, prefixes) and p not in buffers]
    elif kind == "linear":
        chosen = [p for p in paths if p not in buffers]
    elif kind in ("linear-readouts", "linear_readouts"):
        if groups.linear_readouts is not None:
            chosen = [p for p in paths if _under_any(p, groups.linear_readouts)]
        else:
            chosen = [p for p in paths if _under_any(p, groups.readouts) and p not in buffers]
    elif kind == "train":
        rx = _regex(arg, spec)
        chosen = [p for p in paths if rx.search(p)]
    elif kind == "freeze":
        rx = _regex(arg, spec)
        chosen = [p for p in paths if not rx.search(p) and p not in buffers]
    else:
        raise FreezeError(f"unknown freeze spec {spec!r}; use one of: {FREEZE_HELP}")
    if not chosen:
        raise FreezeError(f"freeze spec {spec!r} selects no parameters. Leaves: {_short(paths)}")
    return chosen


def _regex(arg: str, spec: str):
    if not arg:
        raise FreezeError(f"freeze spec {spec!r}: empty regular expression")
    try:
        return re.compile(arg)
    except re.error as exc:
        raise FreezeError(f"freeze spec {spec!r}: bad regular expression ({exc})") from None


def _short(paths: Sequence[str], n: int = 12) -> str:
    s = ", ".join(paths[:n])
    return s + (f", ... ({len(paths)} in all)" if len(paths) > n else "")


# ---- per-group learning rates ----------------------------------------------------------
def lr_group(path: str, groups: ParamGroups) -> str:
    """The learning-rate group of a leaf: ``e0``, ``readouts`` or ``trunk`` (everything else)."""
    if groups.e0 is not None and path == groups.e0:
        return "e0"
    if _under_any(path, groups.readouts):
        return "readouts"
    return "trunk"


def lr_scales(trainable_paths: Sequence[str], groups: ParamGroups, factors: dict) -> dict:
    """``{path: multiplier}`` of the trainable leaves from ``OptimConfig.group_lr`` (1 where unnamed)."""
    return {p: float(factors.get(lr_group(p, groups), 1.0)) for p in trainable_paths}
