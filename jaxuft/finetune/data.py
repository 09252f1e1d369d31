"""Labelled frames -> validated samples -> padded static-shape batches.

- :func:`read_frames` reads extxyz/any ASE format and checks every label
  (missing energy/forces, NaN, wrong shapes, empty files) with messages that
  name the file and the frame.
- :func:`prepare` turns frames into :class:`Sample` s for one potential
  (neighbour lists, species indices; unknown elements are reported per frame).
- :class:`ShapePlan` groups samples by size (atoms bucket) and fixes one
  ``(node, edge, graph)`` capacity per group over *all* datasets of a run, so
  training, validation and replay compile a handful of shapes, once.
- :func:`epoch_batches` shuffles by key: a permutation of the samples, batches
  formed inside each size group, then a permutation of the batches.

Units: energy eV (total), forces eV/Å, stress eV/Å³ (ASE sign, 3x3).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from ase import Atoms

from ..errors import JaxuftError, StructureError, UnknownElementError
from ..graph import Graph, bucket_size
from ..structures import HostGraph, atoms_to_host_graph, batch_host_graphs


class DataError(JaxuftError, ValueError):
    """Training data that cannot be used (missing or non-finite labels, empty files...)."""


# ---- frames ---------------------------------------------------------------------------
@dataclass
class Frame:
    """One structure with its labels (host side).

    energy: eV (total) or None; forces: (n, 3) eV/Å or None;
    stress: (3, 3) eV/Å³ ASE sign or None; weight: config weight in the loss.
    """

    atoms: Atoms
    energy: float | None
    forces: np.ndarray | None
    stress: np.ndarray | None
    weight: float = 1.0
    source: str = ""

    @property
    def n_atoms(self) -> int:
        return len(self.atoms)


def _voigt_to_33(s) -> np.ndarray:
    s = np.asarray(s, dtype=np.float64)
    if s.shape == (3, 3):
        return s
    if s.shape == (6,):
        xx, yy, zz, yz, xz, xy = s
        return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
    if s.size == 9:
        return s.reshape(3, 3)
    raise ValueError(f"stress has shape {s.shape}; expected (6,) Voigt or (3, 3)")


def _lookup(atoms: Atoms, key: str | None, defaults: Sequence[str], per_atom: bool):
    results = dict(atoms.calc.results) if atoms.calc is not None else {}
    keys = [key] if key else list(defaults)
    for k in keys:
        if k in results and results[k] is not None:
            return results[k]
        store = atoms.arrays if per_atom else atoms.info
        if k in store and store[k] is not None:
            return store[k]
    return None


def frame_from_atoms(
    atoms: Atoms,
    label: str,
    energy_key: str | None = None,
    forces_key: str | None = None,
    stress_key: str | None = None,
    require: Sequence[str] = ("energy", "forces"),
    weight: float = 1.0,
) -> Frame:
    """Extract and check the labels of one ``Atoms`` (calculator results, or ``info``/``arrays``)."""
    n = len(atoms)
    if n == 0:
        raise DataError(f"{label} has no atoms")
    e = _lookup(atoms, energy_key, ("energy", "free_energy"), per_atom=False)
    f = _lookup(atoms, forces_key, ("forces",), per_atom=True)
    s = _lookup(atoms, stress_key, ("stress",), per_atom=False)
    hint = (
        "Labels are read from the calculator results ASE attaches to extxyz frames "
        "(energy=..., forces, stress) or from info/arrays keys given with energy_key/forces_key/stress_key."
    )
    if e is None and "energy" in require:
        raise DataError(f"{label} has no energy label. {hint}")
    if f is None and "forces" in require:
        raise DataError(f"{label} has no forces label. {hint}")
    if s is None and "stress" in require:
        raise DataError(f"{label} has no stress label. {hint}")
    energy = None
    if e is not None:
        try:
            energy = float(np.asarray(e).reshape(()))
        except (TypeError, ValueError):
            raise DataError(f"{label}: the energy label {e!r} is not a number") from None
        if not np.isfinite(energy):
            raise DataError(f"{label}: the energy label is {energy} (not finite)")
    forces = None
    if f is not None:
        forces = np.asarray(f, dtype=np.float64)
        if forces.shape != (n, 3):
            raise DataError(f"{label}: forces have shape {forces.shape}, expected ({n}, 3)")
        bad = ~np.isfinite(forces).all(axis=1)
        if bad.any():
            raise DataError(
                f"{label}: forces contain NaN/inf for atom(s) {np.where(bad)[0][:10].tolist()}"
                f"{' ...' if bad.sum() > 10 else ''}; fix or drop this frame"
            )
    stress = None
    if s is not None and np.all(atoms.get_pbc()):
        try:
            stress = _voigt_to_33(s)
        except ValueError as exc:
            raise DataError(f"{label}: {exc}") from None
        if not np.all(np.isfinite(stress)):
            raise DataError(f"{label}: the stress label contains NaN/inf")
    w = float(atoms.info.get("config_weight", weight)) if "config_weight" in atoms.info else float(weight)
    return Frame(atoms=atoms, energy=energy, forces=forces, stress=stress, weight=w, source=label)


def read_frames(
    source: str | os.PathLike | Atoms | Sequence[Atoms] | Sequence[str | os.PathLike],
    *,
    energy_key: str | None = None,
    forces_key: str | None = None,
    stress_key: str | None = None,
    require: Sequence[str] = ("energy", "forces"),
    weight: float = 1.0,
    name: str | None = None,
) -> list[Frame]:
    """Read labelled frames from a file, several files, or ``Atoms`` objects.

    ``require`` lists labels every frame must have ("energy", "forces", "stress").
    """
    if isinstance(source, Frame):
        return [source]
    if isinstance(source, Atoms):
        items = [(source, f"{name or 'structure'} frame 0")]
    elif isinstance(source, (str, os.PathLike)):
        items = [(a, f"{source} frame {k}") for k, a in enumerate(_read_file(source))]
    else:
        seq = list(source)
        if seq and all(isinstance(x, Frame) for x in seq):
            return seq
        items = []
        for j, x in enumerate(seq):
            if isinstance(x, (str, os.PathLike)):
                items += [(a, f"{x} frame {k}") for k, a in enumerate(_read_file(x))]
            elif isinstance(x, Atoms):
                items.append((x, f"{name or 'structures'} frame {j}"))
            else:
                raise DataError(f"cannot read frames from {type(x).__name__}; give paths or ase.Atoms")
        if not items:
            raise DataError(f"{name or 'the data set'} is empty: no frames given")
    return [
        frame_from_atoms(a, lbl, energy_key, forces_key, stress_key, require, weight) for a, lbl in items
    ]


def _read_file(path) -> list[Atoms]:
    import ase.io

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"data file {p} does not exist")
    if p.is_dir():
        raise DataError(f"{p} is a directory; give an extxyz (or other ASE-readable) file")
    if p.stat().st_size == 0:
        raise DataError(f"{p} is empty: it contains no frames")
    try:
        frames = ase.io.read(str(p), ":")
    except StopIteration:
        frames = []
    except Exception as exc:  # ASE raises many types for malformed files
        raise DataError(f"{p} cannot be read by ASE: {type(exc).__name__}: {exc}") from exc
    if isinstance(frames, Atoms):
        frames = [frames]
    if not frames:
        raise DataError(f"{p} contains no frames")
    return list(frames)


def fingerprint(frames: Sequence[Frame]) -> str:
    """sha256 of positions, numbers, cells, pbc, labels and weights (order-sensitive)."""
    h = hashlib.sha256()
    for fr in frames:
        a = fr.atoms
        for arr in (a.get_positions(), a.get_atomic_numbers(), np.asarray(a.get_cell()), a.get_pbc()):
            h.update(np.ascontiguousarray(arr).tobytes())
        for lab in (fr.energy, fr.forces, fr.stress):
            h.update(b"-" if lab is None else np.ascontiguousarray(np.asarray(lab, np.float64)).tobytes())
        h.update(np.float64(fr.weight).tobytes())
    return h.hexdigest()


def split_train_valid(frames: Sequence[Frame], valid_fraction: float, seed: int):
    """Random split by ``seed`` (numpy ``default_rng``); at least one validation frame when asked."""
    frames = list(frames)
    if valid_fraction <= 0:
        return frames, []
    if len(frames) < 2:
        raise DataError(
            f"cannot split {len(frames)} frame(s) into training and validation sets; "
            "give a validation file or set valid_fraction=0"
        )
    n_valid = min(max(1, int(valid_fraction * len(frames))), len(frames) - 1)
    perm = np.random.default_rng(seed).permutation(len(frames))
    valid_idx = set(perm[:n_valid].tolist())
    train = [f for k, f in enumerate(frames) if k not in valid_idx]
    valid = [f for k, f in enumerate(frames) if k in valid_idx]
    return train, valid


# ---- samples --------------------------------------------------------------------------
@dataclass
class Sample:
    """A frame prepared for one potential: neighbour graph plus label arrays."""

    graph: HostGraph
    numbers: np.ndarray
    energy: float
    forces: np.ndarray  # (n, 3)
    stress: np.ndarray  # (3, 3)
    has_energy: bool
    has_forces: bool
    has_stress: bool
    weight: float
    source: str
    cache: dict | None = None  # frozen-trunk arrays (see trunk.py)

    @property
    def n_nodes(self) -> int:
        return self.graph.n_nodes

    @property
    def n_edges(self) -> int:
        return self.graph.n_edges


def prepare(frames: Sequence[Frame], species_map, cutoff: float) -> list[Sample]:
    """Neighbour graphs and label arrays; errors name the offending frame."""
    samples = []
    for fr in frames:
        try:
            g = atoms_to_host_graph(fr.atoms, species_map, cutoff, label=fr.source or "structure")
        except UnknownElementError as exc:
            raise UnknownElementError(f"{fr.source}: {exc}") from None
        except StructureError as exc:
            msg = str(exc)
            raise StructureError(msg if fr.source in msg else f"{fr.source}: {msg}") from None
        n = len(fr.atoms)
        samples.append(
            Sample(
                graph=g,
                numbers=fr.atoms.get_atomic_numbers(),
                energy=0.0 if fr.energy is None else fr.energy,
                forces=np.zeros((n, 3)) if fr.forces is None else fr.forces,
                stress=np.zeros((3, 3)) if fr.stress is None else fr.stress,
                has_energy=fr.energy is not None,
                has_forces=fr.forces is not None,
                has_stress=fr.stress is not None,
                weight=fr.weight,
                source=fr.source,
            )
        )
    return samples


# ---- batches --------------------------------------------------------------------------
class Batch(NamedTuple):
    """A padded batch (a JAX pytree).

    energy (G,) eV, forces (N, 3) eV/Å, stress (G, 3, 3) eV/Å³; ``weight`` (G,) config
    weights (0 on padding); masks are 1.0 where the label exists; ``n_atoms`` (G,) >= 1.
    ``cache`` holds frozen-trunk arrays (or None).
    """

    graph: Graph
    energy: jax.Array
    forces: jax.Array
    stress: jax.Array
    weight: jax.Array
    energy_mask: jax.Array
    forces_mask: jax.Array
    stress_mask: jax.Array
    n_atoms: jax.Array
    cache: Any = None


@dataclass
class ShapePlan:
    """Fixed ``(nodes, edges, graphs)`` capacities shared by every dataset of a run.

    By default there is one shape for everything: room for the ``batch_size``
    largest structures (by atoms, and separately by edges) plus one padding atom
    and one padding graph, rounded up to a bucket.  So training, validation and
    replay each compile once.  ``grouped=True`` gives one shape per atom-count
    bucket instead (less padding for very mixed sizes, more compilations).
    """

    batch_size: int
    grouped: bool = False
    top_nodes: dict = field(default_factory=dict)
    top_edges: dict = field(default_factory=dict)

    def group(self, s: Sample) -> int:
        return bucket_size(s.n_nodes) if self.grouped else 0

    def add(self, samples: Iterable[Sample]) -> "ShapePlan":
        b = self.batch_size
        for s in samples:
            k = self.group(s)
            self.top_nodes[k] = sorted(self.top_nodes.get(k, []) + [s.n_nodes], reverse=True)[:b]
            self.top_edges[k] = sorted(self.top_edges.get(k, []) + [s.n_edges], reverse=True)[:b]
        return self

    def capacity(self, group: int = 0) -> tuple[int, int, int]:
        if group not in self.top_nodes:
            raise KeyError(f"size group {group} was not added to the shape plan")
        return (
            bucket_size(sum(self.top_nodes[group]) + 1),
            bucket_size(max(sum(self.top_edges[group]), 1)),
            self.batch_size + 1,
        )

    @property
    def shapes(self) -> list[tuple[int, int, int]]:
        return [self.capacity(g) for g in sorted(self.top_nodes)]


def collate(samples: Sequence[Sample], capacity: tuple[int, int, int], dtype) -> Batch:
    """Concatenate ``samples`` and pad everything to ``capacity`` = (nodes, edges, graphs)."""
    n_node_cap, n_edge_cap, n_graph_cap = capacity
    dtype = np.dtype(dtype)
    graph = batch_host_graphs(
        [s.graph for s in samples],
        dtype=dtype,
        n_node_capacity=n_node_cap,
        n_edge_capacity=n_edge_cap,
        n_graph_capacity=n_graph_cap,
    )
    g, n = len(samples), sum(s.n_nodes for s in samples)

    def gvec(values, fill=0.0):
        out = np.full(n_graph_cap, fill, dtype=dtype)
        out[:g] = values
        return out

    forces = np.zeros((n_node_cap, 3), dtype=dtype)
    forces[:n] = np.concatenate([s.forces for s in samples])
    fmask = np.zeros(n_node_cap, dtype=dtype)
    fmask[:n] = np.concatenate([np.full(s.n_nodes, float(s.has_forces)) for s in samples])
    stress = np.zeros((n_graph_cap, 3, 3), dtype=dtype)
    stress[:g] = np.stack([s.stress for s in samples])
    cache = None
    if samples[0].cache is not None:
        cache = {}
        for key, first in samples[0].cache.items():
            per_node = key in PER_NODE_CACHE
            size = n_node_cap if per_node else n_graph_cap
            arr = np.zeros((size,) + np.shape(first)[1 if per_node else 0 :], dtype=dtype)
            if per_node:
                arr[:n] = np.concatenate([s.cache[key] for s in samples])
            else:
                arr[:g] = np.stack([s.cache[key] for s in samples])
            cache[key] = jnp.asarray(arr)
    return Batch(
        graph=graph,
        energy=jnp.asarray(gvec([s.energy for s in samples])),
        forces=jnp.asarray(forces),
        stress=jnp.asarray(stress),
        weight=jnp.asarray(gvec([s.weight for s in samples])),
        energy_mask=jnp.asarray(gvec([float(s.has_energy) for s in samples])),
        forces_mask=jnp.asarray(fmask),
        stress_mask=jnp.asarray(gvec([float(s.has_stress) for s in samples])),
        n_atoms=jnp.asarray(gvec([s.n_nodes for s in samples], fill=1.0)),
        cache=cache,
    )


#: frozen-trunk cache keys that are per atom (the rest are per structure)
PER_NODE_CACHE = ("f", "df")


def batch_indices(
    samples: Sequence[Sample], plan: ShapePlan, order: Sequence[int] | None = None
) -> list[tuple[int, list[int]]]:
    """``[(group, [sample indices])]``: chunks of ``batch_size`` inside each size group, in ``order``."""
    order = range(len(samples)) if order is None else order
    by_group: dict[int, list[int]] = {}
    for i in order:
        by_group.setdefault(plan.group(samples[i]), []).append(int(i))
    out = []
    for grp in sorted(by_group):
        idx = by_group[grp]
        out += [(grp, idx[k : k + plan.batch_size]) for k in range(0, len(idx), plan.batch_size)]
    return out


def epoch_batches(samples: Sequence[Sample], plan: ShapePlan, key) -> list[tuple[int, list[int]]]:
    """Shuffled batches for one epoch, determined by the JAX key alone."""
    k1, k2 = jax.random.split(key)
    perm = np.asarray(jax.random.permutation(k1, len(samples)))
    chunks = batch_indices(samples, plan, perm)
    border = np.asarray(jax.random.permutation(k2, len(chunks)))
    return [chunks[i] for i in border]


def iterate(
    samples: Sequence[Sample], plan: ShapePlan, chunks, dtype
) -> Iterator[tuple[list[int], Batch]]:
    for grp, idx in chunks:
        yield idx, collate([samples[i] for i in idx], plan.capacity(grp), dtype)


class FixedBatches:
    """Unshuffled batches built once and kept on the device (validation, replay hold-out)."""

    def __init__(self, samples: Sequence[Sample], plan: ShapePlan, dtype):
        self.samples = list(samples)
        self.chunks = batch_indices(self.samples, plan)
        self.batches = [b for _, b in iterate(self.samples, plan, self.chunks, dtype)]

    def __iter__(self):
        return iter(zip([idx for _, idx in self.chunks], self.batches))

    def __len__(self):
        return len(self.batches)
