"""Isolated-atom reference energies (E0s): from a file, from the model, or least squares.

A model's E0s are the leaf that adds ``E0[species]`` to every atom's energy
(``atomic_energies`` in MACE, ``e0`` in the Morse model; a family may name it with
its ``param_groups`` hook).  The leaf is found by name and *checked numerically*:
raising ``E0[s]`` by 1 eV must raise a structure's energy by ``n_s`` eV.

Modes (``e0s=``):

- ``"model"``   keep the model's E0s (default).
- a JSON path or ``{symbol or Z: eV}``: set the E0s of those elements (e.g.
  ``paper-data/chclca/e0s.json``); every element of the training data must be given.
- ``"lstsq"``   least squares *relative to the model*: ``E0 += argmin |C d - (E_ref - E_model)|``
  over the training set (C: element counts; minimum-norm solution, so a set of one
  composition gets exactly its mean residual removed, spread over elements by count).
- ``"average"`` mace-torch's "average": ``E0 = argmin |C E0 - E_ref|``, ignoring the model.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from ase.data import atomic_numbers as _Z, chemical_symbols

from ..errors import JaxuftError
from .params import ParamGroups, flatten

E0_MODES = ("model", "lstsq", "average", "auto")


class E0Error(JaxuftError, ValueError):
    """E0s cannot be read or applied."""


def read_e0s(path: str | os.PathLike) -> dict[int, float]:
    """``{Z: eV}`` from a JSON file ``{"H": -1.11, ...}`` (symbols or atomic numbers as keys)."""
    p = Path(path)
    try:
        raw = json.loads(p.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"E0s file {p} does not exist") from None
    except json.JSONDecodeError as exc:
        raise E0Error(f"E0s file {p} is not valid JSON: {exc}") from None
    if not isinstance(raw, dict) or not raw:
        raise E0Error(f"E0s file {p} must hold a non-empty JSON object {{element: energy in eV}}")
    return normalise_e0s(raw, str(p))


def normalise_e0s(raw: Mapping, label: str = "E0s") -> dict[int, float]:
    out = {}
    for k, v in raw.items():
        if isinstance(k, str) and not k.isdigit():
            if k not in _Z:
                raise E0Error(f"{label}: unknown element {k!r}")
            z = _Z[k]
        else:
            z = int(k)
        try:
            out[z] = float(v)
        except (TypeError, ValueError):
            raise E0Error(f"{label}: E0 of {k!r} is not a number ({v!r})") from None
        if not np.isfinite(out[z]):
            raise E0Error(f"{label}: E0 of {k!r} is not finite")
    return out


def _get_leaf(params, path: str):
    paths, leaves, _ = flatten(params)
    return leaves[paths.index(path)]


def _set_leaf(params, path: str, value):
    paths, leaves, treedef = flatten(params)
    i = paths.index(path)
    leaves = list(leaves)
    leaves[i] = jnp.asarray(value, dtype=jnp.asarray(leaves[i]).dtype)
    return jax.tree_util.tree_unflatten(treedef, leaves)


def find_e0_leaf(potential, params, graph, groups: ParamGroups) -> str | None:
    """The leaf acting as per-element energy offsets, checked on ``graph``; None if there is none."""
    n_species = len(potential.atomic_numbers)
    paths, leaves, _ = flatten(params)
    candidates = []
    if groups.e0 is not None:
        candidates.append(groups.e0)
    for p, leaf in zip(paths, leaves):
        last = p.split("/")[-1]
        shape = np.shape(leaf)
        if p not in candidates and len(shape) >= 1 and shape[-1] == n_species and (
            last in ("atomic_energies", "e0", "e0s", "atomic_energy", "shift", "E0s")
        ):
            candidates.append(p)
    if not candidates:
        return None
    efs = potential.compiled("efs")  # shared with labelling, evaluation and MD
    energy = lambda prm, g: efs(prm, g)["energy"]
    base = np.asarray(energy(params, graph), dtype=np.float64)
    counts = composition_counts_graph(graph, n_species)
    delta = np.arange(1, n_species + 1, dtype=np.float64) * 0.01
    for c in candidates:
        leaf = np.asarray(_get_leaf(params, c), dtype=np.float64)
        new = _set_leaf(params, c, leaf + delta)
        got = np.asarray(energy(new, graph), dtype=np.float64) - base
        want = counts @ delta
        if np.allclose(got, want, rtol=1e-3, atol=1e-4 * max(1.0, float(np.abs(want).max()))):
            return c
    return None


def composition_counts_graph(graph, n_species: int) -> np.ndarray:
    """(n_graphs, n_species) element counts of the real atoms of a padded graph."""
    sp = np.asarray(graph.species)
    ng = np.asarray(graph.node_graph)
    mask = np.asarray(graph.node_mask)
    out = np.zeros((graph.n_graphs, n_species))
    np.add.at(out, (ng[mask], sp[mask]), 1.0)
    return out


def model_e0s(potential, params, e0_path: str | None) -> dict[int, float] | None:
    if e0_path is None:
        return None
    leaf = np.asarray(_get_leaf(params, e0_path), dtype=np.float64).reshape(-1, len(potential.atomic_numbers))
    return {z: float(leaf[0, k]) for k, z in enumerate(potential.atomic_numbers)}


def set_e0s(potential, params, e0_path: str, values: Mapping[int, float]):
    """Params with ``E0[Z] = values[Z]`` for the given elements (every head, if several)."""
    leaf = np.asarray(_get_leaf(params, e0_path), dtype=np.float64)
    new = leaf.copy().reshape(-1, leaf.shape[-1])
    for k, z in enumerate(potential.atomic_numbers):
        if z in values:
            new[:, k] = values[z]
    return _set_leaf(params, e0_path, new.reshape(leaf.shape))


def composition_matrix(numbers_list: Sequence[np.ndarray], zs: Sequence[int]) -> np.ndarray:
    col = {z: k for k, z in enumerate(zs)}
    c = np.zeros((len(numbers_list), len(zs)))
    for i, nums in enumerate(numbers_list):
        for z in nums:
            c[i, col[int(z)]] += 1
    return c


def lstsq_e0s(numbers_list, energies, zs, base: Mapping[int, float] | None = None, predicted=None) -> dict[int, float]:
    """Minimum-norm least squares E0s; relative to ``base``/``predicted`` when given."""
    present = sorted({int(z) for nums in numbers_list for z in nums})
    c = composition_matrix(numbers_list, present)
    target = np.asarray(energies, dtype=np.float64)
    if predicted is not None:
        target = target - np.asarray(predicted, dtype=np.float64)
    sol, *_ = np.linalg.lstsq(c, target, rcond=None)
    out = {}
    for k, z in enumerate(present):
        out[z] = float(sol[k]) + (float(base[z]) if base is not None else 0.0)
    return out


def describe(values: Mapping[int, float] | None) -> dict[str, float] | None:
    if values is None:
        return None
    return {chemical_symbols[z]: float(v) for z, v in sorted(values.items())}
