"""On-disk label store: one atomically written JSON file per finished label (and per recorded failure), keyed by a stable hash.

    store = LabelStore("run/labels")
    key = label_key(atoms, oracle)            # sha256 of numbers, positions, cell, pbc (+charges/magmoms) and oracle settings
    store.get(key)                            # the record (energy, forces, stress, timing, oracle, energy_reference) or None
    store.to_atoms(store.get(key))            # ase.Atoms with a SinglePointCalculator

Layout: ``labels/<key>.json`` for finished labels, ``failed/<key>.json`` for calculations that
failed after their retries. Files are written with :func:`jaxuft.fileio.atomic_write_json`
(temporary file + fsync + rename), so ``kill -9`` at any moment leaves whole files only.
Positions and cell enter the key rounded to 1e-8 Å, so frames read back from extended XYZ
(8 decimals) find the labels of the frames they were written from.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np

from ..fileio import atomic_write_json
from ..progress import get_logger
from .oracles import LabellingError, OracleConfig

__all__ = ["LabelStore", "label_key", "structure_hash", "LABEL_FORMAT", "KEY_RE"]

log = get_logger(__name__)

LABEL_FORMAT = "jaxuft.label/1"
FAILURE_FORMAT = "jaxuft.label-failure/1"
#: what a label key (or a user-supplied key) may look like: it becomes a file name
KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
_DECIMALS = 8


def _canonical(x, decimals: int = _DECIMALS) -> bytes:
    a = np.round(np.asarray(x, dtype=np.float64), decimals) + 0.0  # + 0.0 turns -0.0 into 0.0
    return np.ascontiguousarray(a).tobytes()


def structure_hash(atoms) -> str:
    """sha256 of the structure: atomic numbers, positions and cell (to 1e-8 Å), pbc, non-zero initial charges/magmoms."""
    h = hashlib.sha256(b"jaxuft.structure/1")
    h.update(np.asarray(atoms.get_atomic_numbers(), dtype=np.int64).tobytes())
    h.update(_canonical(atoms.get_positions()))
    h.update(_canonical(np.asarray(atoms.get_cell())))
    h.update(np.asarray(atoms.get_pbc(), dtype=np.uint8).tobytes())
    for name in ("initial_charges", "initial_magmoms"):
        if name in atoms.arrays and np.any(atoms.arrays[name] != 0):
            h.update(name.encode())
            h.update(_canonical(atoms.arrays[name]))
    return h.hexdigest()


def label_key(atoms, oracle: OracleConfig) -> str:
    """The store key of ``atoms`` labelled by ``oracle``: stable across processes, machines and runs."""
    h = hashlib.sha256(b"jaxuft.label-key/1")
    h.update(structure_hash(atoms).encode())
    h.update(oracle.settings_hash().encode())
    return h.hexdigest()[:40]


def _check_key(key: str) -> str:
    if not isinstance(key, str) or not KEY_RE.match(key):
        raise LabellingError(f"label key {key!r} is not usable as a file name; use letters, digits, '.', '_' and '-' "
                             "(at most 200 characters, not starting with '.' or '-')")
    return key


class LabelStore:
    """A directory of finished labels (``labels/``) and recorded failures (``failed/``)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise LabellingError(f"label store {self.path} exists and is not a directory; give a directory path")
        self.labels_dir = self.path / "labels"
        self.failed_dir = self.path / "failed"

    def __repr__(self) -> str:
        return f"LabelStore({str(self.path)!r})"

    def ensure(self) -> "LabelStore":
        """Create the store's folders (a clear error where that is not allowed)."""
        try:
            self.labels_dir.mkdir(parents=True, exist_ok=True)
            self.failed_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LabellingError(f"cannot create the label store {self.path}: {exc.strerror}; choose a writable directory") from None
        if not os.access(self.labels_dir, os.W_OK):
            raise LabellingError(f"label store {self.path} is not writable; choose a writable directory")
        return self

    # -- finished labels -------------------------------------------------------------------------
    def label_path(self, key: str) -> Path:
        return self.labels_dir / f"{_check_key(key)}.json"

    def failure_path(self, key: str) -> Path:
        return self.failed_dir / f"{_check_key(key)}.json"

    @staticmethod
    def _read(path: Path) -> Optional[dict]:
        try:
            with open(path) as f:
                return json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:  # atomic writes make this unlikely: a disk error or a hand edit
            log.warning("label store: ignoring unreadable %s (%s); it will be recomputed", path, exc)
            return None

    def get(self, key: str) -> Optional[dict]:
        """The finished label record of ``key``, or None."""
        rec = self._read(self.label_path(key))
        if rec is not None and rec.get("format") != LABEL_FORMAT:
            log.warning("label store: %s has format %r, not %r; it will be recomputed",
                        self.label_path(key), rec.get("format"), LABEL_FORMAT)
            return None
        return rec

    def __contains__(self, key: str) -> bool:
        return self.label_path(key).is_file()

    def keys(self) -> list[str]:
        """Keys of all finished labels (sorted)."""
        if not self.labels_dir.is_dir():
            return []
        return sorted(p.stem for p in self.labels_dir.glob("*.json") if not p.name.startswith("."))

    def __len__(self) -> int:
        return len(self.keys())

    def __iter__(self) -> Iterator[dict]:
        for key in self.keys():
            rec = self.get(key)
            if rec is not None:
                yield rec

    def put(self, record: dict) -> Path:
        """Write a finished label atomically (and drop a failure recorded earlier for its key)."""
        record = {"format": LABEL_FORMAT, **record}
        path = atomic_write_json(self.label_path(record["key"]), record)
        fp = self.failure_path(record["key"])
        if fp.exists():
            fp.unlink(missing_ok=True)
        return path

    # -- failures -------------------------------------------------------------------------------
    def get_failure(self, key: str) -> Optional[dict]:
        return self._read(self.failure_path(key))

    def put_failure(self, record: dict) -> Path:
        return atomic_write_json(self.failure_path(record["key"]), {"format": FAILURE_FORMAT, **record})

    def failures(self) -> list[dict]:
        """Every recorded failure (key, error, attempts, oracle, time), oldest first."""
        if not self.failed_dir.is_dir():
            return []
        recs = [self._read(p) for p in self.failed_dir.glob("*.json") if not p.name.startswith(".")]
        return sorted((r for r in recs if r is not None), key=lambda r: r.get("failed_at", 0.0))

    # -- conversion -------------------------------------------------------------------------------
    @staticmethod
    def to_atoms(record: dict, atoms=None):
        """``atoms`` (a copy; default: rebuilt from the record) with the label as a SinglePointCalculator."""
        from ase import Atoms
        from ase.calculators.singlepoint import SinglePointCalculator

        if atoms is None:
            atoms = Atoms(numbers=record["numbers"], positions=record["positions"], cell=record["cell"], pbc=record["pbc"])
        else:
            atoms = atoms.copy()
        results: dict[str, Any] = {"energy": record["energy"], "forces": np.asarray(record["forces"], dtype=np.float64)}
        if record.get("free_energy") is not None:
            results["free_energy"] = record["free_energy"]
        if record.get("stress") is not None:
            results["stress"] = np.asarray(record["stress"], dtype=np.float64)
        atoms.calc = SinglePointCalculator(atoms, **results)
        atoms.info["label_key"] = record["key"]
        atoms.info["energy_reference"] = record.get("energy_reference")
        return atoms

    def frames(self) -> list:
        """All finished labels as Atoms, in the order they finished."""
        recs = sorted(self, key=lambda r: r.get("timing", {}).get("finished_at", 0.0))
        return [self.to_atoms(r) for r in recs]
