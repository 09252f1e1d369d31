"""``jaxuft md`` never loses work: frames and state are written per chunk, kill -9 / SIGINT then --resume
continues exactly, output directories are refused/locked/overwritten explicitly, summary.json is strict JSON."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from ase.io import write
from test_md_cli import _parse
from test_md_common import cu_crystal

from jaxuft.md import MDInputError
from jaxuft.outdir import OutputDirError

REPO = Path(__file__).resolve().parents[1]
#: 40 chunks of 100 steps (2 replicas x 32 atoms, float64): a few seconds after compiling
RUN = ["--model", "morse", "--ensemble", "nvt-langevin", "--temperature", "300", "--timestep", "2",
       "--friction", "0.02", "--steps", "4000", "--record-every", "20", "--chunk-steps", "100",
       "--replicas", "2", "--seed", "5", "--dtype", "float64", "-q"]


@pytest.fixture(scope="module")
def start(tmp_path_factory):
    path = tmp_path_factory.mktemp("md_start") / "start.xyz"
    write(path, cu_crystal(rattle=0.05, seed=2), format="extxyz")
    return path


@pytest.fixture(scope="module")
def reference(start, tmp_path_factory):
    """The uninterrupted run."""
    out = tmp_path_factory.mktemp("md_ref") / "run"
    args = _parse(["md", "--structure", str(start), *RUN, "-o", str(out)])
    assert args.func(args) == 0
    return out


def _spawn(argv, prelude=""):
    code = prelude + f"\nimport sys\nfrom jaxuft.cli import main\nsys.exit(main({argv!r}))\n"
    env = {**os.environ, "JAXUFT_PROGRESS": "0"}
    return subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, proc, timeout=300.0):
    t0 = time.monotonic()
    while not path.exists():
        assert proc.poll() is None, f"the run ended before writing {path}: {proc.communicate()}"
        assert time.monotonic() - t0 < timeout, f"{path} never appeared"
        time.sleep(0.005)


def _assert_same_outputs(a: Path, b: Path):
    za, zb = np.load(a / "trajectory.npz"), np.load(b / "trajectory.npz")
    assert sorted(za.files) == sorted(zb.files)
    for k in za.files:
        np.testing.assert_array_equal(za[k], zb[k], err_msg=k)
    for name in ("replica_000.extxyz", "replica_001.extxyz"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    sa, sb = np.load(a / "state.npz"), np.load(b / "state.npz")
    for k in sa.files:
        if k != "description.json":
            np.testing.assert_array_equal(sa[k], sb[k], err_msg=k)


def _resume(start, out, *extra):
    args = _parse(["md", "--structure", str(start), *RUN, "--resume", "-o", str(out), *extra])
    return args.func(args)


def test_kill_9_mid_run_then_resume_is_exact(start, reference, tmp_path):
    out = tmp_path / "run"
    proc = _spawn(["md", "--structure", str(start), *RUN, "-o", str(out)])
    try:
        _wait_for(out / "state.npz", proc)
        # a second writer is refused while the first one holds the directory (even with --resume)
        with pytest.raises(OutputDirError, match="being written by another jaxuft process"):
            _resume(start, out)
        proc.send_signal(signal.SIGKILL)
        proc.wait(60)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL
    done = json.loads(str(np.load(out / "state.npz")["description.json"]))["extra"]["run"]["steps_done"]
    assert 0 < done < 4000, done  # killed mid-run, with at least one chunk on disk
    assert not (out / "summary.json").exists()
    assert _resume(start, out) == 0
    _assert_same_outputs(reference, out)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed_at_step"] == [done] and summary["restart"] is None


def test_kill_between_frames_and_state_then_resume_is_exact(start, reference, tmp_path):
    """Killed after chunk 3's frames were appended but before its state was saved: the resume cuts the
    files back to chunk 2 and the result is still the uninterrupted run."""
    out = tmp_path / "run"
    prelude = textwrap.dedent("""
        import os, signal
        from jaxuft.md.simulation import Simulation
        calls = []
        original = Simulation.save
        def save(self, *a, **k):
            calls.append(1)
            if len(calls) == 3:
                os.kill(os.getpid(), signal.SIGKILL)
            return original(self, *a, **k)
        Simulation.save = save
    """)
    proc = _spawn(["md", "--structure", str(start), *RUN, "-o", str(out)], prelude)
    proc.communicate(timeout=600)
    assert proc.returncode == -signal.SIGKILL
    desc = json.loads(str(np.load(out / "state.npz")["description.json"]))
    assert desc["extra"]["run"]["steps_done"] == 200 and desc["extra"]["frames"] == 10
    assert (out / "replica_000.extxyz").stat().st_size > desc["extra"]["files"]["replica_000.extxyz"]
    assert _resume(start, out) == 0
    _assert_same_outputs(reference, out)


def test_sigint_saves_state_and_exits_with_one_line(start, reference, tmp_path):
    out = tmp_path / "run"
    proc = _spawn(["md", "--structure", str(start), *RUN, "-o", str(out)])
    try:
        _wait_for(out / "state.npz", proc)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("jaxuft md:")]
    assert len(lines) == 2 and "--resume -o" in lines[-1], err  # notice + final one-line message
    assert _resume(start, out) == 0
    _assert_same_outputs(reference, out)


def test_output_dir_refused_overwritten_and_summary_strict(start, tmp_path):
    out = tmp_path / "run"
    short = ["--model", "morse", "--steps", "40", "--record-every", "20", "-q", "--structure", str(start)]
    args = _parse(["md", *short, "--replicas", "2", "-o", str(out)])
    assert args.func(args) == 0
    args = _parse(["md", *short, "--replicas", "1", "-o", str(out)])
    with pytest.raises(OutputDirError, match="--resume.*--overwrite"):
        args.func(args)
    args = _parse(["md", *short, "--replicas", "1", "--overwrite", "-o", str(out)])
    assert args.func(args) == 0
    assert not (out / "replica_001.extxyz").exists()  # the old run's file was cleared
    # strict JSON (no bare NaN); the restart and its source are recorded
    out2 = tmp_path / "run2"
    args = _parse(["md", "--restart", str(out / "state.npz"), "--steps", "20", "-q", "-o", str(out2)])
    assert args.func(args) == 0  # model, structure and settings come from the saved state
    text = (out2 / "summary.json").read_text()
    summary = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    assert summary["restart"]["kind"] == "restart" and summary["restart"]["from"].endswith("run/state.npz")
    assert summary["restart"]["step"] == 40 and summary["steps"] == 20 and summary["replicas"] == 1


def test_restart_checks_and_flag_errors(start, tmp_path):
    out = tmp_path / "run"
    base = ["--model", "morse", "--steps", "40", "--record-every", "20", "-q"]
    args = _parse(["md", *base, "--structure", str(start), "-o", str(out)])
    assert args.func(args) == 0
    other = tmp_path / "other.xyz"
    write(other, cu_crystal(rattle=0.05, seed=9), format="extxyz")
    args = _parse(["md", *base, "--structure", str(other), "--restart", str(out / "state.npz"), "-o",
                   str(tmp_path / "x")])
    with pytest.raises(MDInputError, match="positions differ"):
        args.func(args)
    args = _parse(["md", *base, "--structure", str(start), "--temperature", "400", "--resume", "-o", str(out)])
    with pytest.raises(MDInputError, match="--temperature 400.0 differs"):
        args.func(args)
    args = _parse(["md", *base, "--dtype", "float64", "--restart", str(out / "state.npz"), "-o", str(tmp_path / "y")])
    with pytest.raises(MDInputError, match="--dtype cannot change"):
        args.func(args)
    # a completed run: --resume has nothing left to do
    args = _parse(["md", "--resume", "-q", "-o", str(out)])
    assert args.func(args) == 0
    # settings from a file; a misspelt field is named
    from jaxuft.config import ConfigError

    (tmp_path / "md.yaml").write_text("timestep: 1.0\ntemprature: 300\n")
    args = _parse(["md", *base, "--structure", str(start), "--config", str(tmp_path / "md.yaml"), "-o",
                   str(tmp_path / "z")])
    with pytest.raises(ConfigError, match="temprature: unknown field"):
        args.func(args)
    args = _parse(["md", *base, "-o", str(tmp_path / "w")])
    with pytest.raises(MDInputError, match="--structure is required"):
        args.func(args)


def test_resume_before_the_first_chunk_starts_over(start, tmp_path):
    """Killed before any chunk finished: the directory holds empty outputs and no state; --resume starts
    the run from the structure (and --resume without a structure says what is missing)."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "replica_000.extxyz").write_bytes(b"")
    (out / "replica_001.extxyz").write_bytes(b"partial")
    args = _parse(["md", "--model", "morse", "--resume", "-q", "-o", str(out)])
    with pytest.raises(MDInputError, match="--structure is required"):
        args.func(args)
    args = _parse(["md", "--model", "morse", "--structure", str(start), "--steps", "40", "--record-every", "20",
                   "--resume", "-q", "-o", str(out)])
    assert args.func(args) == 0
    assert not (out / "replica_001.extxyz").exists()  # one replica now: the stale file was removed
    assert json.loads((out / "summary.json").read_text())["frames_per_replica"] == [2]
