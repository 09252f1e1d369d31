"""``jaxuft bench``: the suite's CPU path with tiny settings, the torch-free MACE-MP-0b-small-shaped model, gpu_suite.sh's dry run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]

REPORT_KEYS = {"schema", "date", "device", "host", "versions", "settings", "results", "complete", "elapsed_s"}


def test_tile_shape_is_even_and_exact():
    from jaxuft.bench.suite import tile_shape

    assert tile_shape(1) == (1, 1, 1)
    assert tile_shape(8) == (2, 2, 2)
    assert tile_shape(4) == (2, 2, 1)
    assert tile_shape(27) == (3, 3, 3)
    for n in (2, 6, 12, 16, 64):
        assert int(np.prod(tile_shape(n))) == n


def test_u_tensors_equal_mace_torch(tmp_path):
    """The torch-free U tensors are mace-torch's U_matrix_real (release default, full CG basis)."""
    from venvs import skip_without

    py = skip_without("mace")
    script = (
        "import os, numpy as np, torch\n"
        "from e3nn import o3\n"
        "from mace.tools.cg import U_matrix_real\n"
        "out = {}\n"
        "for irr, nu in (('0e', 1), ('0e', 2), ('0e', 3), ('1o', 2)):\n"
        "    u = U_matrix_real(irreps_in=o3.Irreps('0e+1o+2e+3o'), irreps_out=o3.Irreps(irr), correlation=nu,"
        " dtype=torch.float64)[-1]\n"
        "    out[f'{irr}_{nu}'] = u.numpy()\n"
        f"np.savez({str(tmp_path / 'u.npz')!r}, **out)\n"
    )
    env = {"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1", "PATH": "/usr/bin:/bin"}
    subprocess.run([py, "-c", script], check=True, capture_output=True, env=env, timeout=300)
    from jaxuft.bench.cg import u_matrix

    ref = np.load(tmp_path / "u.npz")
    for key in ref.files:
        irr, nu = key.split("_")
        ours = u_matrix("0e+1o+2e+3o", irr, int(nu))
        assert ours.shape == ref[key].shape, key
        np.testing.assert_allclose(ours, ref[key], atol=1e-12, err_msg=key)


def test_mace_mp0b_small_shape_has_the_release_parameter_count():
    """8 221 968 trainable weights: mace-torch's ScaleShiftMACE with the MP-0b small hyperparameters
    (tests/reference/mace_build.py --preset mp0b-small reports it), plus 89 E0s, scale and shift."""
    from jaxuft.bench.models import mace_config, mace_constants, random_params

    cfg = mace_config()
    params = random_params(cfg, mace_constants(cfg), seed=0)
    trainable = sum(int(np.size(v)) for k, v in params.items() if k not in ("atomic_energies", "scale", "shift"))
    assert trainable == 8_221_968
    assert len(cfg["atomic_numbers"]) == 89 and cfg["r_max"] == 6.0 and cfg["max_ell"] == 3
    tiny = mace_config(atomic_numbers=(1, 8), channels=4, max_ell=1, correlation=2, radial_mlp=(4,), mlp_dim=2)
    a, b = (random_params(tiny, mace_constants(tiny), seed=0) for _ in range(2))
    assert all(np.array_equal(a[k], b[k]) for k in a)  # seeded


def test_bench_tiny_writes_report(tmp_path, capsys):
    from jaxuft.cli import main

    out = tmp_path / "bench.json"
    rc = main(["bench", "--tiny", "--replicas", "1", "--sizes", "1", "-o", str(out)])  # one MD shape: one compile
    printed = capsys.readouterr().out
    assert rc == 0, printed
    report = json.loads(out.read_text())
    assert REPORT_KEYS <= set(report)
    assert report["schema"] == "jaxuft-bench/1" and report["complete"] is True
    assert report["device"]["backend"] == "cpu" and report["device"]["count"] >= 1
    assert {"jax", "jaxuft", "python"} <= set(report["versions"])
    assert report["settings"]["models"] == ["mace-tiny"] and report["settings"]["system"] == "nacl-8"
    rows = report["results"]
    assert not [r for r in rows if "error" in r or "skipped" in r], rows
    assert [r["item"] for r in rows] == ["md-replicas", "md-sizes", "energy-forces", "finetune", "soap-q"]
    for r in rows:
        assert r["compile_s"] >= 0 and r["peak_rss_gb"] > 0 and r["device_peak_gb"] is None  # no stats on CPU
    md = [r for r in rows if r["item"].startswith("md")]
    assert [(r["replicas"], r["atoms"], r["tile"]) for r in md] == [(1, 8, 1), (1, 8, 1)]
    for r in md:
        assert r["atom_steps_per_s"] > 0 and r["recompilations"] == 0 and r["stopped"] == 0
    assert md[0]["cost_vs_r1"] == 1.0 and md[1]["cost_vs_1x"] == 1.0
    ft = rows[3]
    assert ft["frames"] == 1 and ft["ms_per_step"] > 0
    soap = rows[4]
    assert soap["features"] > 0 and soap["q_ms"] > 0 and soap["pca_rows"] == 24
    # printed as it went: a header and one line per row
    assert "atom-steps/s" in printed and "md-replicas" in printed and "soap-q" in printed


def test_bench_rejects_bad_settings(tmp_path, capsys):
    from jaxuft.cli import main

    assert main(["bench", "--tiny", "--replicas", "0", "-o", str(tmp_path / "b.json")]) == 2
    err = capsys.readouterr().err
    assert "--replicas" in err and "positive" in err
    assert main(["bench", "--tiny", "--frame", str(tmp_path / "missing.xyz"), "-o", str(tmp_path / "b.json")]) == 2
    assert "no such structure file" in capsys.readouterr().err


def test_gpu_suite_dry_run(tmp_path):
    """The GPU script's plan, checks and messages run anywhere (no install, no GPU, nothing measured)."""
    res = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_suite.sh"), "--dry-run"], capture_output=True,
                         text=True, timeout=120, cwd=tmp_path, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
                                                                   "JAXUFT_PYTHON": sys.executable})
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    assert "dry run" in out and "jaxuft bench" in out and "1 64 1024" in out


def test_auto_replica_batch_fits_half_the_device(monkeypatch):
    from jaxuft.bench import measure, suite

    assert suite.auto_replica_batch(197, 1024) is None  # CPU: md.Simulation's own default
    monkeypatch.setattr(suite, "accelerator", lambda: True)
    monkeypatch.setattr(measure, "device_memory", lambda: {"limit": 104.0, "peak": 0.0})
    assert suite.auto_replica_batch(197, 1024) == 70  # 0.5 * 104 GiB / (4 MB * 197 atoms)
    assert suite.auto_replica_batch(197, 64) is None  # all fit in one group
    monkeypatch.setattr(measure, "device_memory", lambda: None)  # no statistics: no guess
    assert suite.auto_replica_batch(197, 1024) is None
