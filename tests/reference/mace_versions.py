"""Older mace-torch releases, swapped into the one mace reference venv (issue 11.7).

The MACE-MP release files were pickled by older mace versions than the reference venv's
(0.3.16), with other class layouts.  Rather than one venv per version, each release is
installed once with ``pip install --no-deps --target <cache>/mace-releases/mace-torch-V``
and put first on ``sys.path`` of the reference venv's python: torch, e3nn 0.4.4 and every
other dependency are shared; only the ``mace`` package changes.  Models are built with
``mace_build.py``'s presets (constructor keywords a release does not know are dropped when
they ask for the old behaviour, otherwise the preset is refused) and predicted with
``mace_predict.py``, both run by that release.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import mace_reference as mr

#: (version, preset, the release files of that era)
RELEASES = (
    ("0.3.3", "tiny-mp0", "oldest mace-torch on PyPI; MACE-MP-0 (Dec 2023) was pickled by mace 0.3.0 from GitHub"),
    ("0.3.5", "tiny", "MACE-MP-0b era (Agnesi transform + ZBL)"),
    ("0.3.10", "tiny-density", "MACE-MPA-0 era (density-normalised interaction blocks)"),
)

HERE = Path(__file__).resolve().parent

# Runs inside the reference venv: the release first on sys.path, unknown keywords filtered.
_RUNNER = r"""
import inspect, runpy, sys
release, script, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
sys.path.insert(0, release)
sys.path.insert(1, {here!r})
import mace
assert mace.__file__.startswith(release), mace.__file__
from mace import modules
real = modules.ScaleShiftMACE
known = set().union(*(inspect.signature(c.__init__).parameters for c in real.__mro__ if "__init__" in vars(c)))
OLD_BEHAVIOUR = {{"use_reduced_cg": False, "distance_transform": "None", "pair_repulsion": False, "heads": None}}
def tolerant(**kw):
    for k in [k for k in kw if k not in known]:
        if k in OLD_BEHAVIOUR and kw[k] in (OLD_BEHAVIOUR[k], None):
            kw.pop(k)
        else:
            raise SystemExit(f"mace {{mace.__version__ if hasattr(mace, '__version__') else '?'}} cannot build this preset: no keyword {{k}}={{kw[k]!r}}")
    return real(**kw)
modules.ScaleShiftMACE = tolerant
if "heads" not in known:  # for mace_build's summary line only: a class attribute is never pickled
    real.heads = ("Default",)
if not hasattr(mace, "__version__"):
    mace.__version__ = release.rsplit("-", 1)[-1]
sys.argv = [script] + argv
runpy.run_path(script, run_name="__main__")
"""


def release_dir(version: str) -> Path:
    return mr.cache_dir() / "mace-releases" / f"mace-torch-{version}"


def ensure_release(version: str, timeout: float = 600) -> Path:
    """Install mace-torch ``version`` (no dependencies) beside the reference venv, once."""
    py = mr.skip_without_mace()
    d = release_dir(version)
    marker = d / ".jaxuft-complete"
    if marker.is_file():
        return d
    d.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", "--upgrade", "--target", str(d),
                           f"mace-torch=={version}"], capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0 or not (d / "mace").is_dir():
        raise mr.MaceReferenceError(f"pip could not install mace-torch=={version} into {d}:\n{proc.stderr[-2000:]}")
    marker.write_text(version + "\n")
    return d


def _run(version: str, script: Path, args: list[str], timeout: float) -> subprocess.CompletedProcess:
    py = mr.skip_without_mace()
    code = _RUNNER.format(here=str(HERE))
    return mr._run([py, "-c", code, str(ensure_release(version)), str(script), *args], timeout)


def build_model(version: str, preset: str, seed: int = 0, timeout: float = 900) -> Path:
    """A random ``preset`` model pickled by mace-torch ``version`` (cached by version/preset/seed)."""
    dest = mr.cache_dir() / "mace-releases" / "models" / f"{preset}-s{seed}-mace{version}.model"
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".tmp.model")
    _run(version, mr.BUILD_SCRIPT, ["--preset", preset, "--seed", str(seed), "--dtype", "float64", "-o", str(tmp)],
         timeout)
    tmp.replace(dest)
    return dest


PREDICT_SCRIPT = HERE / "mace_release_predict.py"


def predict(version: str, model: Path, frames, timeout: float = 900) -> list[dict]:
    """``[{"energy", "forces", "stress_3x3" (periodic only)}]`` of ``frames`` by mace-torch ``version`` (float64)."""
    import numpy as np
    from ase.io import write

    frames = list(frames)
    key = mr._sha("release-predict", version, mr._file_sha(model), mr._frames_sha(frames),
                  PREDICT_SCRIPT.read_bytes(), _RUNNER)
    out = mr.cache_dir() / "mace-releases" / "predict" / f"{key[:24]}.npz"
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        traj = out.with_suffix(".traj")
        write(traj, list(frames))
        tmp = out.with_suffix(".tmp.npz")
        _run(version, PREDICT_SCRIPT, [str(model), str(traj), str(tmp)], timeout)
        tmp.replace(out)
        traj.unlink(missing_ok=True)
    with np.load(out) as z:
        return [{k.split(".", 1)[1]: z[k] for k in z.files if k.startswith(f"f{i:04d}.")} for i in range(len(frames))]

