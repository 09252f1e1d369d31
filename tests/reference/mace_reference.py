"""mace-torch reference results for the parity tests, without importing torch.

Everything torch-related runs in the separate reference venv (``.venvs/mace``, made by
``tests/reference/make_venvs.sh mace``) through two scripts next to this file:

* ``mace_build.py``   -- builds a randomly initialised ``ScaleShiftMACE`` preset and
  ``torch.save``s it (whole-module pickle, like real release files);
* ``mace_predict.py`` -- runs frames through mace's own ``MACECalculator``.

This module only uses the standard library, numpy and ase, so it can be imported by tests
running in the JAX venv::

    from mace_reference import mace_python, build_model, predict   # tests/reference on sys.path

    if mace_python() is None:
        pytest.skip("no mace reference venv")
    model = build_model("tiny", seed=0, dtype="float64")
    ref = predict(model, frames, dtype="float64")       # list of dicts, one per frame
    ref[0]["energy"], ref[0]["forces"], ref[0]["stress"], ref[0]["descriptors"]

Results are cached by a hash of all inputs (model file bytes, frames, dtype, head, script
text) under ``$JAXUFT_REFERENCE_CACHE`` or ``<repo>/.cache/reference`` (git-ignored).
Cached results keep the timings of the run that produced them.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

import numpy as np
import venvs

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent
BUILD_SCRIPT = HERE / "mace_build.py"
PREDICT_SCRIPT = HERE / "mace_predict.py"

#: presets understood by mace_build.py (kept in sync by hand; the script is the authority)
PRESETS = (
    "mp0b-small",
    "mp0-small",
    "mp0-medium",
    "mp0-large",
    "mpa0-medium",
    "multihead",
    "tiny",
    "tiny-mp0",
    "tiny-density",
)

#: per-frame keys of the prediction dicts (see mace_predict.py for units and shapes)
FRAME_KEYS = (
    "energy",
    "forces",
    "stress",
    "stress_3x3",
    "node_energy",
    "node_energy_no_e0",
    "descriptors",
    "descriptors_full",
    "numbers",
    "positions",
    "cell",
    "pbc",
    "mace_cell",
    "time_ef_s",
    "time_calc_s",
)

DEFAULT_TIMEOUT_S = 3600.0


class MaceReferenceError(RuntimeError):
    """A reference subprocess failed; the message carries its command and stderr."""


def mace_python() -> Optional[str]:
    """Path of the mace reference venv's python (``$JAXUFT_MACE_PYTHON`` or ``.venvs/mace``), or None."""
    return venvs.venv_python("mace")


def skip_without_mace() -> str:
    """``pytest.skip`` unless the mace reference venv exists; returns its python."""
    return venvs.skip_without("mace")


def cache_dir() -> Path:
    """Root of the reference cache (created on demand)."""
    root = Path(os.environ.get("JAXUFT_REFERENCE_CACHE", REPO_ROOT / ".cache" / "reference"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def _sha(*parts: Union[bytes, str]) -> str:
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, str):
            part = part.encode()
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()


def _file_sha(path: Union[str, Path]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _run(cmd: Sequence[str], timeout: float) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    # never let the JAX venv's variables leak into the torch venv
    for var in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"):
        env.pop(var, None)
    try:
        proc = subprocess.run(
            list(cmd),
            cwd=str(REPO_ROOT),
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        raise MaceReferenceError(
            f"timed out after {timeout:.0f}s: {' '.join(cmd)}\n--- stderr ---\n"
            f"{(exc.stderr or '')[-8000:] if isinstance(exc.stderr, str) else ''}"
        ) from exc
    if proc.returncode != 0:
        raise MaceReferenceError(
            f"exit status {proc.returncode}: {' '.join(cmd)}\n"
            f"--- stderr (tail) ---\n{proc.stderr[-8000:]}\n"
            f"--- stdout (tail) ---\n{proc.stdout[-2000:]}"
        )
    return proc


def _require_python() -> str:
    py = mace_python()
    if py is None:
        raise MaceReferenceError(
            "no mace reference venv: run tests/reference/make_venvs.sh mace "
            "(or set JAXUFT_MACE_PYTHON to a python with mace-torch installed)"
        )
    return py


def build_model(
    preset: str,
    seed: int = 0,
    dtype: str = "float64",
    dest: Optional[Union[str, Path]] = None,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> Path:
    """Build (or reuse) a random mace model file; returns its path.

    ``dest``: a ``*.model`` file path, or a directory (the file name is derived), or None
    (``<cache>/models``).  A file is reused when its ``.json`` sidecar records the same
    preset, seed, dtype and build-script hash.
    """
    if dtype not in ("float64", "float32"):
        raise ValueError(f"dtype must be float64 or float32, not {dtype!r}")
    key = _sha("build", preset, str(seed), dtype, BUILD_SCRIPT.read_bytes())
    if dest is None:
        dest = cache_dir() / "models"
    dest = Path(dest)
    if dest.suffix != ".model":
        dest = dest / f"{preset}-s{seed}-{dtype}-{key[:10]}.model"
    dest.parent.mkdir(parents=True, exist_ok=True)
    sidecar = dest.with_suffix(".json")
    if dest.is_file() and sidecar.is_file():
        try:
            if json.loads(sidecar.read_text()).get("key") == key:
                return dest
        except (OSError, ValueError):
            pass
    py = _require_python()
    cmd = [
        py,
        str(BUILD_SCRIPT),
        "--preset",
        preset,
        "--seed",
        str(seed),
        "--dtype",
        dtype,
        "-o",
        str(dest),
    ]
    proc = _run(cmd, timeout)
    try:
        info = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        info = {}
    info["key"] = key
    tmp = sidecar.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(info, indent=1))
    os.replace(tmp, sidecar)
    return dest


def model_info(model_path: Union[str, Path]) -> Dict[str, Any]:
    """The build sidecar (preset, seed, n_params, heads, r_max, ...) of a built model."""
    return json.loads(Path(model_path).with_suffix(".json").read_text())


def _frames_to_atoms(frames) -> List[Any]:
    from ase import Atoms

    if isinstance(frames, Atoms):
        frames = [frames]
    out = []
    for atoms in frames:
        a = atoms.copy()
        a.calc = None
        out.append(a)
    return out


def _frames_sha(frames) -> str:
    parts: List[bytes] = []
    for a in frames:
        parts += [
            np.ascontiguousarray(a.numbers, dtype=np.int64).tobytes(),
            np.ascontiguousarray(a.positions, dtype=np.float64).tobytes(),
            np.ascontiguousarray(a.cell[:], dtype=np.float64).tobytes(),
            np.ascontiguousarray(a.pbc, dtype=bool).tobytes(),
        ]
    return _sha(*parts)


def load_prediction(npz_path: Union[str, Path]) -> List[Dict[str, Any]]:
    """Read an OUT.npz of mace_predict.py into one dict per frame (+ ``"meta"``)."""
    with np.load(npz_path, allow_pickle=False) as d:
        n = int(d["n_frames"])
        meta = json.loads(str(d["meta"]))
        results = []
        for i in range(n):
            p = f"f{i:04d}."
            frame: Dict[str, Any] = {"meta": meta}
            for name in d.files:
                if name.startswith(p):
                    frame[name[len(p):]] = d[name]
            for name in ("energy", "time_ef_s", "time_calc_s"):
                if name in frame:
                    frame[name] = float(frame[name])
            results.append(frame)
    return results


def predict(
    model_path: Union[str, Path],
    frames: Union[Any, Iterable[Any]],
    dtype: str = "float64",
    head: Optional[str] = None,
    repeats: int = 5,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> List[Dict[str, Any]]:
    """mace-torch energy/forces/stress/node energies/descriptors for ``frames``.

    ``frames``: an ``ase.Atoms`` or a sequence of them (positions, cell, pbc and numbers are
    passed losslessly through an ASE .traj file).  Returns one dict per frame with the keys
    in :data:`FRAME_KEYS` (``energy`` a float, the rest numpy arrays) and ``meta``.
    ``repeats``: timing repeats in the subprocess (0 skips timing).
    """
    from ase.io import write

    if dtype not in ("float64", "float32"):
        raise ValueError(f"dtype must be float64 or float32, not {dtype!r}")
    atoms_list = _frames_to_atoms(frames)
    if not atoms_list:
        return []
    model_path = Path(model_path)
    key = _sha(
        "predict",
        _file_sha(model_path),
        _frames_sha(atoms_list),
        dtype,
        head or "",
        str(repeats),
        PREDICT_SCRIPT.read_bytes(),
    )
    pdir = cache_dir() / "predict"
    pdir.mkdir(parents=True, exist_ok=True)
    out = pdir / f"{key[:24]}.npz"
    if out.is_file():
        try:
            return load_prediction(out)
        except (OSError, ValueError, KeyError):
            pass  # corrupt cache entry: recompute
    py = _require_python()
    frames_file = pdir / f"{key[:24]}.frames.traj"
    tmp = pdir / f"{key[:24]}.frames.{os.getpid()}.traj"
    write(str(tmp), atoms_list, format="traj")
    os.replace(tmp, frames_file)
    cmd = [py, str(PREDICT_SCRIPT), str(model_path), str(frames_file), str(out)]
    cmd += ["--dtype", dtype, "--repeats", str(repeats)]
    if head is not None:
        cmd += ["--head", head]
    _run(cmd, timeout)
    return load_prediction(out)


__all__ = [
    "FRAME_KEYS",
    "PRESETS",
    "MaceReferenceError",
    "build_model",
    "cache_dir",
    "load_prediction",
    "mace_python",
    "model_info",
    "predict",
    "skip_without_mace",
]
