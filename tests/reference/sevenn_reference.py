"""sevenn (torch) reference results for the SevenNet parity tests, without importing torch.

The torch side runs in ``.venvs/sevenn`` (``tests/reference/make_venvs.sh sevenn``)
through ``sevenn_ref.py``; this module needs only the standard library, numpy and ase::

    from sevenn_reference import skip_without_sevenn, sevennet0_checkpoint, random_checkpoint, predict

    skip_without_sevenn()
    ckpt = sevennet0_checkpoint()                     # the .pth inside the sevenn wheel
    ref = predict(ckpt, frames, dtype="float32")      # one dict per frame
    ref[0]["energy"], ref[0]["forces"], ref[0]["stress"], ref[0]["energies"]

Results are cached by a hash of every input (checkpoint bytes, frames, dtype, script
text) under ``$JAXUFT_REFERENCE_CACHE`` or ``<repo>/.cache/reference/sevenn``.
``$JAXUFT_SEVENN_PYTHON`` overrides the interpreter (empty: no reference).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import venvs

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent
SCRIPT = HERE / "sevenn_ref.py"
VENV = venvs.venv_dir("sevenn")
SEVENNET0_MEMBER = "sevenn/pretrained_potentials/SevenNet_0__11Jul2024/checkpoint_sevennet_0.pth"
TIMEOUT_S = 1800.0


class SevennReferenceError(RuntimeError):
    """A reference subprocess failed; the message has its command and stderr."""


def sevenn_python() -> str | None:
    """Path of the sevenn reference venv's python (``$JAXUFT_SEVENN_PYTHON`` or ``.venvs/sevenn``), or None."""
    return venvs.venv_python("sevenn")


def skip_without_sevenn() -> str:
    """``pytest.skip`` unless the sevenn reference venv exists; returns its python."""
    return venvs.skip_without("sevenn")


def cache_dir() -> Path:
    root = Path(os.environ.get("JAXUFT_REFERENCE_CACHE", REPO_ROOT / ".cache" / "reference")) / "sevenn"
    root.mkdir(parents=True, exist_ok=True)
    return root


def _sha(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        p = p.encode() if isinstance(p, str) else p
        h.update(len(p).to_bytes(8, "little") + p)
    return h.hexdigest()


def _file_sha(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _run(cmd, timeout=TIMEOUT_S) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    try:
        proc = subprocess.run([str(c) for c in cmd], cwd=REPO_ROOT, env=env, capture_output=True,
                              text=True, timeout=timeout)  # fmt: skip
    except subprocess.TimeoutExpired as e:
        raise SevennReferenceError(f"timed out after {timeout:.0f} s: {' '.join(map(str, cmd))}") from e
    if proc.returncode != 0:
        raise SevennReferenceError(
            f"exit {proc.returncode}: {' '.join(map(str, cmd))}\n--- stderr ---\n{proc.stderr[-6000:]}"
        )
    return proc


def sevennet0_checkpoint() -> Path:
    """SevenNet-0 (11Jul2024) as shipped inside the reference venv's sevenn package."""
    hits = sorted(VENV.glob(f"lib/python*/site-packages/{SEVENNET0_MEMBER}"))
    if hits:
        return hits[0]
    py = skip_without_sevenn()
    return Path(_run([py, SCRIPT, "path", "7net-0"]).stdout.strip().splitlines()[-1])


def random_checkpoint(*, preset: str | None = None, base: str | None = None, seed: int = 0) -> Path:
    """A random-weight SevenNet checkpoint made by ``sevenn_ref.py random`` (cached)."""
    py = skip_without_sevenn()
    key = _sha("random", preset or "", base or "", str(seed), SCRIPT.read_bytes())
    out = cache_dir() / f"random-{preset or 'base-' + str(base)}-s{seed}-{key[:12]}.pth"
    if not out.is_file():
        tmp = out.with_suffix(f".{os.getpid()}.tmp.pth")
        args = ["--preset", preset] if preset else ["--base", base]
        _run([py, SCRIPT, "random", tmp, *args, "--seed", str(seed)])
        os.replace(tmp, out)
    return out


def _frames_sha(frames) -> str:
    parts = []
    for a in frames:
        parts += [np.asarray(a.numbers, np.int64).tobytes(), np.asarray(a.positions, np.float64).tobytes(),
                  np.asarray(a.cell[:], np.float64).tobytes(), np.asarray(a.pbc, bool).tobytes()]  # fmt: skip
    return _sha(*parts)


def load_prediction(path) -> list[dict]:
    with np.load(path, allow_pickle=False) as d:
        n = int(d["n_frames"])
        meta = json.loads(str(d["meta"]))
        out = []
        for i in range(n):
            p = f"f{i:04d}."
            fr = {k[len(p):]: d[k] for k in d.files if k.startswith(p)}
            fr["energy"] = float(fr["energy"])
            fr["meta"] = meta
            for k in ("time_s", "time_first_s"):
                if k in fr:
                    fr[k] = float(fr[k])
            out.append(fr)
    return out


def predict(checkpoint, frames, dtype: str = "float32", repeats: int = 0, threads: int = 0) -> list[dict]:
    """sevenn energy (eV), forces (eV/Å), stress (Voigt eV/Å^3, ASE sign) and per-atom energies."""
    from ase import Atoms
    from ase.io import write

    py = skip_without_sevenn()
    frames = [frames] if isinstance(frames, Atoms) else list(frames)
    atoms = []
    for a in frames:
        a = a.copy()
        a.calc = None
        atoms.append(a)
    key = _sha("predict", _file_sha(checkpoint), _frames_sha(atoms), dtype, str(repeats), str(threads),
               SCRIPT.read_bytes())  # fmt: skip
    out = cache_dir() / f"predict-{key[:24]}.npz"
    if out.is_file() and repeats == 0:
        try:
            return load_prediction(out)
        except (OSError, ValueError, KeyError):
            pass
    traj = cache_dir() / f"frames-{key[:24]}.{os.getpid()}.traj"
    write(str(traj), atoms, format="traj")
    tmp = out.with_suffix(f".{os.getpid()}.tmp.npz")
    try:
        cmd = [py, SCRIPT, "predict", checkpoint, traj, tmp, "--dtype", dtype, "--repeats", str(repeats)]
        if threads:
            cmd += ["--threads", str(threads)]
        _run(cmd)
        os.replace(tmp, out)
    finally:
        traj.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)
    return load_prediction(out)
