"""Recorded frames of a replica ensemble: numpy arrays, ASE frames, extxyz and npz files.

Arrays have shape ``(R, F, ...)`` (replicas, frames).  Units: positions/cell Å,
forces eV/Å, energies eV, temperature K, pressure bar, stress eV/Å³ (ASE sign,
potential part), time fs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from ..fileio import atomic_open
from .state import RUNNING

#: per-frame arrays recorded by the engine (besides observables)
FRAME_FIELDS = (
    "positions", "cell", "forces", "energy", "kinetic_energy", "temperature",
    "stress", "pressure", "step", "status",
)


def _voigt(s):
    return np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])


@dataclass
class Trajectory:
    """Frames of ``R`` replicas recorded every ``record_every`` steps.

    ``data``: dict of arrays ``(R, F, ...)`` (``FRAME_FIELDS``; ``time`` fs);
    ``observables``: dict of arrays ``(R, F, ...)`` from the observables hook;
    ``valid``: (R, F) bool, frames to keep (running, or the last good frame of a
    replica that stopped in this segment);
    ``numbers``, ``masses``, ``pbc``: the system; ``report``: run summary.
    A mixed batch (one system per replica): ``numbers``/``masses`` are ``(R, N)`` padded and
    ``n_atoms (R,)`` holds each system's atom count; :meth:`atoms` trims, :meth:`system` gives
    one system's frames as an ordinary trajectory.  ``timestep_fs``: a number, or one per replica.
    """

    data: dict
    observables: dict
    valid: np.ndarray
    numbers: np.ndarray
    masses: np.ndarray
    pbc: np.ndarray
    timestep_fs: float
    report: dict = field(default_factory=dict)
    n_atoms: np.ndarray | None = None

    @property
    def mixed(self) -> bool:
        return self.n_atoms is not None

    def system(self, replica: int) -> "Trajectory":
        """Replica ``replica`` alone, trimmed to its own atoms (an ordinary one-replica trajectory)."""
        r = int(replica)
        n = int(self.n_atoms[r]) if self.mixed else len(self.numbers)
        pad = self.data["positions"].shape[2]

        def cut(v):
            v = np.asarray(v)[r:r + 1]
            return v[:, :, :n] if v.ndim >= 3 and v.shape[2] == pad else v

        ts = np.asarray(self.timestep_fs)
        return Trajectory(
            data={k: cut(v) for k, v in self.data.items()},
            observables={k: cut(v) for k, v in self.observables.items()},
            valid=self.valid[r:r + 1], numbers=np.asarray(self.numbers[r][:n] if self.mixed else self.numbers),
            masses=np.asarray(self.masses[r][:n] if self.mixed else self.masses), pbc=self.pbc,
            timestep_fs=float(ts[r]) if ts.ndim else float(ts), report=self.report,
        )

    @property
    def n_replicas(self) -> int:
        return int(self.valid.shape[0])

    @property
    def n_frames(self) -> int:
        return int(self.valid.shape[1])

    def __getattr__(self, name):
        data = self.__dict__.get("data", {})
        if name in data:
            return data[name]
        obs = self.__dict__.get("observables", {})
        if name in obs:
            return obs[name]
        raise AttributeError(name)

    @staticmethod
    def concatenate(parts: list["Trajectory"]) -> "Trajectory":
        """Join segments along the frame axis (reports are kept as a list)."""
        first = parts[0]
        cat = lambda dicts: {k: np.concatenate([d[k] for d in dicts], axis=1) for k in dicts[0]}
        return Trajectory(
            data=cat([p.data for p in parts]),
            observables=cat([p.observables for p in parts]) if first.observables else {},
            valid=np.concatenate([p.valid for p in parts], axis=1),
            numbers=first.numbers, masses=first.masses, pbc=first.pbc,
            timestep_fs=first.timestep_fs, report={"segments": [p.report for p in parts]}, n_atoms=first.n_atoms,
        )

    # ---- ASE frames --------------------------------------------------------------
    def atoms(self, replica: int = 0, only_valid: bool = True) -> list[Atoms]:
        """The frames of one replica as ASE ``Atoms`` with energy/forces/stress results."""
        out = []
        d = self.data
        full_pbc = bool(np.all(self.pbc))
        n = int(self.n_atoms[replica]) if self.mixed else len(self.numbers)
        numbers = self.numbers[replica][:n] if self.mixed else self.numbers
        for f in range(self.n_frames):
            if only_valid and not self.valid[replica, f]:
                continue
            a = Atoms(numbers=numbers, positions=d["positions"][replica, f][:n],
                      cell=d["cell"][replica, f], pbc=self.pbc)
            results = {
                "energy": float(d["energy"][replica, f]),
                "forces": np.asarray(d["forces"][replica, f][:n], dtype=np.float64),
            }
            if full_pbc:
                results["stress"] = _voigt(np.asarray(d["stress"][replica, f], dtype=np.float64))
            a.calc = SinglePointCalculator(a, **results)
            a.info.update(
                step=int(d["step"][replica, f]),
                time_fs=float(d["time"][replica, f]),
                temperature_K=float(d["temperature"][replica, f]),
                kinetic_energy=float(d["kinetic_energy"][replica, f]),
                replica=int(replica),
            )
            if full_pbc:
                a.info["pressure_bar"] = float(d["pressure"][replica, f])
            if int(d["status"][replica, f]) != RUNNING:
                a.info["stopped"] = int(d["status"][replica, f])
            for k, v in self.observables.items():
                val = np.asarray(v[replica, f])
                if val.ndim == 0:
                    a.info[k] = float(val)
                elif val.shape[0] in (len(a), d["positions"].shape[2]):
                    a.arrays[k] = np.asarray(val[:n], dtype=np.float64)
            out.append(a)
        return out

    # ---- files -----------------------------------------------------------------
    def write_extxyz(self, directory: str | os.PathLike, prefix: str = "replica", append: bool = False) -> list[Path]:
        """One ``{prefix}_{r:03d}.extxyz`` per replica (readable by ``ase.io.read``)."""
        from ase.io import write

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        paths = []
        for r in range(self.n_replicas):
            p = directory / f"{prefix}_{r:03d}.extxyz"
            frames = self.atoms(r)
            if frames or not append:
                write(p, frames, format="extxyz", append=append)
            paths.append(p)
        return paths

    def save_npz(self, path: str | os.PathLike, compressed: bool = True) -> Path:
        """All arrays in one ``.npz`` (positions/forces/cell as float32), replaced atomically."""
        arrays = {}
        for k, v in self.data.items():
            v = np.asarray(v)
            if k in ("positions", "forces", "cell", "stress") and v.dtype == np.float64:
                v = v.astype(np.float32)
            arrays[k] = v
        for k, v in self.observables.items():
            arrays["obs." + k] = np.asarray(v)
        arrays.update(valid=self.valid, numbers=self.numbers, masses=self.masses, pbc=self.pbc,
                      timestep_fs=np.asarray(self.timestep_fs))
        if self.mixed:
            arrays["n_atoms"] = np.asarray(self.n_atoms)
        with atomic_open(path, "wb") as f:  # a crash leaves the old file or the new one
            (np.savez_compressed if compressed else np.savez)(f, **arrays)
        return Path(path)

    @staticmethod
    def load_npz(path: str | os.PathLike) -> "Trajectory":
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
        obs = {k[4:]: data.pop(k) for k in list(data) if k.startswith("obs.")}
        meta = {k: data.pop(k) for k in ("valid", "numbers", "masses", "pbc", "timestep_fs")}
        n_atoms = data.pop("n_atoms", None)
        ts = meta["timestep_fs"]
        return Trajectory(data=data, observables=obs, valid=meta["valid"], numbers=meta["numbers"],
                          masses=meta["masses"], pbc=meta["pbc"], timestep_fs=float(ts) if ts.ndim == 0 else ts,
                          n_atoms=n_atoms)
