"""The files of an MD run, written as it goes: per chunk the frames are appended to each replica's extxyz, ``trajectory.npz`` is replaced atomically, and then ``state.npz`` records how far every file is valid.

After a crash (``kill -9`` included) ``state.npz`` is the last complete chunk; a resumed run
cuts each extxyz back to the byte length recorded there and ``trajectory.npz`` back to the
recorded frame count, so the finished files equal those of a run that was never stopped.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from .errors import MDInputError
from .trajectory import Trajectory

STATE_NAME = "state.npz"
TRAJECTORY_NAME = "trajectory.npz"
SUMMARY_NAME = "summary.json"


def replica_name(r: int) -> str:
    return f"replica_{r:03d}.extxyz"


class RunWriter:
    """Writes the frames and the state of one ``jaxuft md`` output directory chunk by chunk.

    ``bookkeeping``: the dict stored in ``state.npz``'s description (``extra``) on every
    chunk; this writer keeps its ``files`` (valid bytes per extxyz) and ``frames`` entries.
    """

    def __init__(self, directory: Path, sim, replicas: int, bookkeeping: dict, resume_from: dict | None = None):
        self.dir = Path(directory)
        self.sim = sim
        self.replicas = int(replicas)
        self.book = bookkeeping
        self.parts: list[Trajectory] = []
        if resume_from is None:
            self.book["files"] = {replica_name(r): 0 for r in range(self.replicas)}
            self.book["frames"] = 0
            for name in self.book["files"]:
                (self.dir / name).write_bytes(b"")
        else:
            self._cut_back(resume_from)

    def _cut_back(self, saved: dict) -> None:
        """Drop what a killed run wrote after its last saved state."""
        files, frames = dict(saved["files"]), int(saved["frames"])
        for name, size in files.items():
            path = self.dir / name
            have = path.stat().st_size if path.exists() else 0
            if have < size:
                raise MDInputError(f"{path} is shorter ({have} bytes) than the saved state records ({size} bytes); "
                                   "the output directory was changed: start again with --overwrite")
            with open(path, "r+b") as f:
                f.truncate(size)
        self.book["files"], self.book["frames"] = files, frames
        if frames:
            traj_path = self.dir / TRAJECTORY_NAME
            if not traj_path.exists():
                raise MDInputError(f"{traj_path} is missing but the saved state records {frames} frames; "
                                   "start again with --overwrite")
            old = Trajectory.load_npz(traj_path)
            if old.n_frames < frames:
                raise MDInputError(f"{traj_path} holds {old.n_frames} frames but the saved state records {frames}; "
                                   "start again with --overwrite")
            cut = lambda d: {k: v[:, :frames] for k, v in d.items()}
            self.parts.append(Trajectory(data=cut(old.data), observables=cut(old.observables),
                                         valid=old.valid[:, :frames], numbers=old.numbers, masses=old.masses,
                                         pbc=old.pbc, timestep_fs=old.timestep_fs))

    def trajectory(self) -> Trajectory | None:
        """All frames of this output directory so far."""
        return Trajectory.concatenate(self.parts) if self.parts else None

    def write_chunk(self, state, frames: Trajectory) -> None:
        """Append ``frames``, replace ``trajectory.npz``, then save ``state`` (in that order)."""
        from ase.io import write

        for r in range(self.replicas):
            name = replica_name(r)
            atoms = frames.atoms(r)
            with open(self.dir / name, "ab") as f:
                if atoms:
                    buf = io.StringIO()
                    write(buf, atoms, format="extxyz")
                    f.write(buf.getvalue().encode())
                f.flush()
                os.fsync(f.fileno())
                self.book["files"][name] = f.tell()
        self.parts.append(frames)
        self.book["frames"] = int(sum(p.n_frames for p in self.parts))
        self.trajectory().save_npz(self.dir / TRAJECTORY_NAME)
        self.sim.save(state, self.dir / STATE_NAME, extra=self.book)

    def frames_per_replica(self) -> list[int]:
        traj = self.trajectory()
        return [0] * self.replicas if traj is None else [int(v) for v in traj.valid.sum(axis=1)]

    def mean_temperature(self) -> float | None:
        traj = self.trajectory()
        if traj is None or not traj.valid.any():
            return None
        return float(np.mean(traj.temperature[traj.valid]))
