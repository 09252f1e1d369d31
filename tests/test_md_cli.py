"""``jaxuft md`` command line (run in-process through ``register``)."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
from ase.io import read, write
from test_md_common import cu_crystal

from jaxuft.md.cli import register


def _parse(argv):
    parser = argparse.ArgumentParser(prog="jaxuft")
    register(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_cli_md_writes_trajectories_and_summary(tmp_path):
    write(tmp_path / "start.xyz", cu_crystal(), format="extxyz")
    out = tmp_path / "run"
    args = _parse([
        "md", "--model", "morse", "--structure", str(tmp_path / "start.xyz"), "--ensemble", "nvt-langevin",
        "--temperature", "300", "--timestep", "2", "--friction", "0.02", "--steps", "100", "--replicas", "2",
        "--record-every", "10", "--seed", "3", "-o", str(out), "-q",  # default dtype: float32
    ])
    assert args.func(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["replicas"] == 2 and summary["atoms"] == 32 and summary["steps"] == 100
    assert summary["dtype"] == "float32" and 100 < summary["mean_temperature_K"] < 600
    for key in ("atom_steps_per_s", "compile_s", "compilations", "stops", "capacity_regrows"):
        assert key in summary
    assert [s["status"] for s in summary["stops"]] == ["running", "running"]
    assert summary["trajectories"] == ["replica_000.extxyz", "replica_001.extxyz"]
    frames = read(out / "replica_001.extxyz", index=":")
    assert len(frames) == 10 and np.isfinite(frames[-1].get_potential_energy())
    assert frames[-1].get_stress().shape == (6,)
    z = np.load(out / "trajectory.npz")
    assert z["positions"].shape == (2, 10, 32, 3)

    # continue from the saved state
    out2 = tmp_path / "run2"
    args = _parse([
        "md", "--model", "morse", "--structure", str(tmp_path / "start.xyz"), "--ensemble", "nvt-langevin",
        "--temperature", "300", "--timestep", "2", "--friction", "0.02", "--steps", "100", "--replicas", "2",
        "--record-every", "10", "--restart", str(out / "state.npz"), "-o", str(out2), "-q",
    ])
    assert args.func(args) == 0
    s2 = json.loads((out2 / "summary.json").read_text())
    assert s2["compilations"] == 0
    assert read(out2 / "replica_000.extxyz", index=0).info["step"] == 110


def test_cli_md_rejects_bad_input(tmp_path):
    from jaxuft.md import MDInputError

    atoms = cu_crystal()
    atoms.pbc = False
    write(tmp_path / "mol.xyz", atoms, format="extxyz")
    args = _parse(["md", "--model", "morse", "--structure", str(tmp_path / "mol.xyz"), "--ensemble", "npt",
                   "--steps", "10", "--record-every", "10", "-o", str(tmp_path / "x")])
    with pytest.raises(MDInputError, match="fully periodic"):
        args.func(args)
    args = _parse(["md", "--model", "morse", "--structure", str(tmp_path / "missing.xyz"), "-o", str(tmp_path / "x")])
    with pytest.raises(FileNotFoundError):
        args.func(args)
