"""The naive/periodic protocols end to end on a toy system (Morse foundation, EMT oracle, 32 Cu atoms):
the loop runs, periodic rounds compile nothing new, kill -9 in MD / labelling / fine-tuning then --resume
gives the same result tables, a crashing oracle is retried and recorded, a bad config is one clear message."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from workflow_toy import toy

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).resolve().parent / "workflow_toy.py"


def _run_script(tmp_path, cfg, run, *extra, expect_kill=False):
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(json.dumps(cfg))
    env = dict(os.environ, PYTHONPATH=f"{SCRIPT.parent}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", JAXUFT_PROGRESS="0")
    p = subprocess.run([sys.executable, str(SCRIPT), str(cfg_path), str(run), *extra], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=900)
    if expect_kill:
        assert p.returncode == -9, f"expected SIGKILL, got {p.returncode}\n{p.stderr[-3000:]}"
        assert "[test] SIGKILL" in p.stderr
    else:
        assert p.returncode == 0, p.stderr[-4000:]
    return p


def _tables(run: Path) -> dict:
    return json.loads((run / "results.json").read_text())


def _report_results_part(run: Path) -> str:
    text = (run / "report" / "report.md").read_text()
    return text.split("## Timings")[0]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted toy run (in this process), shared by the tests below."""
    from jaxuft.workflows import run_workflow

    run = tmp_path_factory.mktemp("wf") / "ref"
    results = run_workflow(toy(), run)
    return run, results


def test_loop_runs_end_to_end(reference):
    run, res = reference
    assert set(res["protocols"]) == {"naive", "periodic"}
    assert res["protocols"]["naive"]["n_labels"] == 4
    assert res["protocols"]["periodic"]["n_labels"] == 6 and res["protocols"]["periodic"]["rounds"] == 3
    assert [f["n_train_frames"] for f in res["protocols"]["periodic"]["finetune"]] == [2, 4, 6]
    for name in ("foundation", "naive", "periodic"):
        r = res["evaluation"][name]["residuals"]
        assert r["n"] == 2 and r["force_rmse_meV_A"] > 0
    # fine-tuned models were put on the oracle's energy zero (refitted E0s); the foundation was not
    assert abs(res["evaluation"]["periodic"]["residuals"]["energy_mean_meV_atom"]) < abs(
        res["evaluation"]["foundation"]["residuals"]["energy_mean_meV_atom"])
    for f in ("manifest.json", "ledger.json", "config.json", "timings.json", "report/report.md", "report/residuals.png"):
        assert (run / f).exists(), f
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "finished" and manifest["seed"] == 3 and manifest["sessions"][0]["versions"]["jax"]
    assert (run / "periodic/round_03/finetune/model").is_dir()


def test_periodic_rounds_compile_nothing_new(reference):
    run, _ = reference
    t = json.loads((run / "timings.json").read_text())
    assert t["periodic/round_01/md"]["compilations"] >= 0
    for k in (2, 3):
        assert t[f"periodic/round_{k:02d}/md"]["compilations"] == 0, t[f"periodic/round_{k:02d}/md"]


def test_kill9_in_each_stage_then_resume_gives_identical_results(reference, tmp_path):
    """One run killed with SIGKILL during MD, resumed and killed during labelling, resumed and killed during
    fine-tuning (after an epoch's checkpoint), then resumed to the end: the result tables equal the
    uninterrupted run's (so they are also reproducible from process to process), finished stages are never
    redone, and the report is identical above its timings."""
    from jaxuft.workflows.report import write_report

    ref_run, res = reference
    run = tmp_path / "killed"
    kills = [("--kill-in", "naive/md", "--after", "0.3"),                 # during MD (compilation or steps)
             ("--kill-label", "3"),                                      # during labelling (3rd label of this session)
             ("--kill-epoch", "periodic/round_02/finetune", "2")]         # during fine-tuning, after a checkpoint
    for i, kill in enumerate(kills):
        before = json.loads((run / "ledger.json").read_text())["stages"] if (run / "ledger.json").exists() else {}
        args = ("--resume",) if i else ()
        _run_script(tmp_path, toy(), run, *args, *kill, expect_kill=True)
        assert not (run / "results.json").exists()
        after = json.loads((run / "ledger.json").read_text())["stages"] if (run / "ledger.json").exists() else {}
        for stage, entry in before.items():  # stages finished before a kill are not redone
            assert after[stage] == entry, stage
        assert len(after) >= len(before)
    _run_script(tmp_path, toy(), run, "--resume")
    assert _tables(run) == res
    manifest = json.loads((run / "manifest.json").read_text())
    assert [s["resumed"] for s in manifest["sessions"]] == [False, True, True, True]
    # naive/labels was killed at its 3rd label: the 2 finished before the kill were reused, not computed again
    timings = json.loads((run / "timings.json").read_text())
    assert (timings["naive/labels"]["n_reused"], timings["naive/labels"]["n_computed"]) == (2, 2)
    # the same report above the timings (the run label is the directory name)
    assert _report_results_part(run).replace("| killed |", "| ref |") == _report_results_part(ref_run)
    out = write_report([ref_run, run], tmp_path / "both")
    assert "| ref | periodic |" in out.read_text() and "| killed | periodic |" in out.read_text()


def test_crashing_oracle_is_retried_and_recorded(tmp_path):
    from jaxuft.workflows import run_workflow

    cfg = toy(protocols=["naive"], evaluation=None,
              labelling={"oracle": {"factory": "workflow_toy:flaky_emt", "kwargs": {"fail_every": 2}},
                         "n_workers": 0, "retries": 1, "min_success": 0.25},
              naive={"replicas": 2, "steps": 60, "n_labels": 6})
    res = run_workflow(cfg, tmp_path / "run")
    p = res["protocols"]["naive"]
    assert p["n_failed"] >= 1 and p["n_labels"] + p["n_failed"] == 6
    assert all(f["attempts"] == 2 and "simulated oracle crash" in f["error"] for f in p["failed"])
    assert "simulated oracle crash" in (tmp_path / "run/report/report.md").read_text()


def test_too_few_labels_is_a_clear_error(tmp_path):
    from jaxuft.labelling import LabellingError
    from jaxuft.workflows import run_workflow

    cfg = toy(protocols=["naive"], evaluation=None,
              labelling={"oracle": {"factory": "workflow_toy:flaky_emt", "kwargs": {"fail_every": 1}},
                         "n_workers": 0, "retries": 0, "min_success": 0.5})
    with pytest.raises(LabellingError, match="succeeded|fewer|only"):
        run_workflow(cfg, tmp_path / "run")


def test_bad_config_is_one_clear_message(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("structure: {bulk: {symbol: Cu}}\nnaive: {replica: 3}\nmd: {timestep: -1}\nfinetune: {epoch: 3}\n")
    p = subprocess.run([sys.executable, "-m", "jaxuft.cli", "run", str(bad), "-o", str(tmp_path / "r")],
                       capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr
    assert "naive.replica: unknown field" in p.stderr
    assert "md.timestep: Input should be greater than 0" in p.stderr
    assert "finetune" in p.stderr and "epoch" in p.stderr
    assert not (tmp_path / "r").exists(), "a bad config must fail before any work (no run directory)"
    p = subprocess.run([sys.executable, "-m", "jaxuft.cli", "config", "validate", str(bad)], capture_output=True, text=True)
    assert p.returncode == 2 and "naive.replica" in p.stderr


def test_run_directory_is_not_clobbered(reference):
    from jaxuft.outdir import OutputDirError
    from jaxuft.workflows import run_workflow

    run, _ = reference
    with pytest.raises(OutputDirError, match="--resume"):
        run_workflow(toy(), run)
    with pytest.raises(Exception, match="another config"):
        run_workflow(toy(seed=4), run, resume=True)
