"""Read what the analysis works on: structure files (extxyz, anything ASE reads, jaxuft trajectory.npz) and
LAMMPS-style thermo tables (a header row of column names, then numbers; tab/space separated, or a log.lammps)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from ase import Atoms

__all__ = ["read_frames", "read_thermo"]


def read_frames(path: str | os.PathLike, index=":", replica: int | None = None) -> list[Atoms]:
    """Frames of ``path`` as ASE ``Atoms`` (labels attached as calculator results).

    ``*.npz`` files written by ``jaxuft md`` (``trajectory.npz``) give the frames of
    every replica in order (``replica=`` keeps one); ``info["step"]`` holds the MD step.
    Everything else is read with ``ase.io.read(path, index)``.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; pass a structure file (extxyz, trajectory.npz, ...)")
    if path.suffix == ".npz":
        from ..md.trajectory import Trajectory

        try:
            traj = Trajectory.load_npz(path)
        except KeyError as exc:
            raise ValueError(f"{path} is not a jaxuft trajectory.npz (missing {exc}); pass an extxyz file instead") from None
        reps = range(traj.n_replicas) if replica is None else [int(replica)]
        frames = [a for r in reps for a in traj.atoms(r)]
        return frames if index == ":" else _index(frames, index)
    import ase.io

    try:
        frames = ase.io.read(path, index)
    except Exception as exc:  # ASE raises many types for unreadable files
        raise ValueError(f"cannot read structures from {path}: {exc}") from None
    return [frames] if isinstance(frames, Atoms) else list(frames)


def _index(frames: list, index) -> list:
    if isinstance(index, int):
        return [frames[index]]
    if isinstance(index, str) and ":" in index:
        parts = [int(p) if p else None for p in index.split(":")]
        return frames[slice(*parts)]
    return [frames[int(index)]]


def _is_number_row(tokens: list[str]) -> bool:
    try:
        [float(t) for t in tokens]
    except ValueError:
        return False
    return bool(tokens)


def read_thermo(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Columns of a thermo table as ``{name: array}`` (float64), in file order.

    Accepts a table with one header row (``Step Temp PotEng ...``; ``#`` comment lines
    ignored) or a LAMMPS ``log.lammps``: every header row directly followed by rows of as
    many numbers is a block; blocks with the same header are concatenated (a step repeated
    at a block boundary is kept once); a later block with other columns ends the table.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; pass a thermo table (e.g. chclca/thermo/Periodic-FT1.tsv)")
    with open(path) as f:
        lines = [line.split() for line in f]
    header: list[str] | None = None
    rows: list[list[float]] = []
    i = 0
    while i < len(lines):
        t = lines[i]
        nxt = lines[i + 1] if i + 1 < len(lines) else []
        if t and not t[0].startswith("#") and not _is_number_row(t) and _is_number_row(nxt) and len(nxt) == len(t):
            if header is None:
                header = t
            elif t != header:
                break
            step = header.index("Step") if "Step" in header else None
            i += 1
            while i < len(lines) and _is_number_row(lines[i]) and len(lines[i]) == len(header):
                vals = [float(x) for x in lines[i]]
                if not (rows and step is not None and vals[step] == rows[-1][step]):
                    rows.append(vals)
                i += 1
            continue
        i += 1
    if header is None or not rows:
        raise ValueError(f"{path} holds no thermo table (expected a header row such as 'Step Temp PotEng' followed by numbers)")
    data = np.asarray(rows, dtype=np.float64)
    return {name: data[:, k] for k, name in enumerate(header)}
