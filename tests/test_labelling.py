"""Labelling oracles: EMT/Morse/xTB/factory labels, the resumable store, retries and failures, Dask workers dying, kill -9."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk, molecule
from ase.calculators.emt import EMT
from ase.io import read, write

from jaxuft.config import ConfigError
from jaxuft.labelling import (
    LabellingError, LabelResult, LabelStore, OracleConfig, as_oracle, label_frames, label_key, make_calculator,
)

HERE = Path(__file__).resolve().parent


def cu_frames(n: int, mode: dict | None = None):
    out = []
    for i in range(n):
        a = bulk("Cu", "fcc", a=3.6, cubic=True)
        a.rattle(0.05, seed=i)
        a.info["tag"] = i
        if mode and i in mode:
            a.info["mode"] = mode[i]
        out.append(a)
    return out


def flaky(tmp_path, delay=0.0, log=None) -> OracleConfig:
    kw = {"marker_dir": str(tmp_path / "markers"), "delay": delay}
    if log:
        kw["log"] = str(log)
    return OracleConfig(factory="test_labelling_factories:make_flaky", kwargs=kw)


def reference(atoms, calc):
    a = atoms.copy()
    a.calc = calc
    return a.get_potential_energy(), a.get_forces()


# -- configuration -------------------------------------------------------------------------------

@pytest.mark.parametrize("bad, field", [
    ({"name": "nosuchcode"}, "name: "),
    ({"name": "emt", "factory": "a:b"}, "exactly one of name"),
    ({}, "exactly one of name"),
    ({"factory": "no_colon"}, "factory: "),
    ({"name": "xtb", "kwargs": {"method": "GFN3-xTB"}}, "kwargs.method"),
    ({"name": "emt", "kwarg": {}}, "kwarg: unknown field"),
    ({"name": "emt", "kwargs": {"x": float("nan")}}, "kwargs: "),
])
def test_oracle_config_errors_name_the_field(bad, field):
    with pytest.raises(ConfigError) as err:
        as_oracle(bad)
    assert field in str(err.value)


def test_oracle_settings_and_energy_reference():
    gfn1 = OracleConfig(name="tblite", kwargs={"method": "GFN1-xTB"})
    assert gfn1.name == "xtb" and gfn1.kwargs == {"method": "GFN1-xTB", "verbosity": 0}
    assert gfn1.energy_reference == "tblite:GFN1-xTB"
    assert OracleConfig(name="xtb").kwargs["method"] == "GFN2-xTB"
    # verbosity changes what is printed, not the label
    assert gfn1.settings_hash() == OracleConfig(name="xtb", kwargs={"method": "GFN1-xTB", "verbosity": 1}).settings_hash()
    assert gfn1.settings_hash() != OracleConfig(name="xtb", kwargs={"method": "GFN2-xTB"}).settings_hash()
    assert OracleConfig(name="EMT").energy_reference == "ase:emt"
    assert OracleConfig(name="emt", energy_reference="my-dft").energy_reference == "my-dft"
    assert OracleConfig(factory="a.b:c").energy_reference == "factory:a.b:c"
    assert as_oracle(gfn1.model_dump()) == gfn1
    with pytest.raises(Exception, match="frozen"):
        gfn1.name = "emt"            # the settings behind stored keys cannot change under a label


def test_make_calculator_errors():
    with pytest.raises(LabellingError, match="cannot import module 'no_such_module_xyz'"):
        make_calculator(OracleConfig(factory="no_such_module_xyz:f"))
    with pytest.raises(LabellingError, match="has no function 'nope'"):
        make_calculator(OracleConfig(factory="test_labelling_factories:nope"))
    with pytest.raises(LabellingError, match="not an ASE calculator"):
        make_calculator(OracleConfig(factory="test_labelling_factories:not_a_calculator"))
    with pytest.raises(LabellingError, match="bad kwargs"):
        make_calculator(OracleConfig(name="emt", kwargs={"no_such_option": 1}))


def test_label_key_is_stable_and_discriminating():
    a = cu_frames(1)[0]
    o = OracleConfig(name="emt")
    k = label_key(a, o)
    assert k == label_key(a.copy(), o) == label_key(a, OracleConfig(name="emt"))
    b = a.copy()
    b.positions[0, 0] += 1e-6
    assert label_key(b, o) != k
    c = a.copy()
    c.pbc = False
    assert label_key(c, o) != k
    assert label_key(a, OracleConfig(name="morse")) != k
    d = a.copy()
    d.set_initial_charges([0, 0, 0, 1.0])
    assert label_key(d, o) != k
    e = a.copy()
    e.positions[0, 0] += 1e-11   # below the 1e-8 Å rounding: the same structure
    assert label_key(e, o) == k


# -- labelling in process: EMT, Morse, factory, reuse ----------------------------------------------

def test_emt_labels_store_and_reuse(tmp_path):
    frames = cu_frames(3)
    frames.append(frames[1].copy())  # a duplicate is computed once
    frames[3].info["tag"] = 3
    store = tmp_path / "labels"
    res = label_frames(frames, OracleConfig(name="emt"), store, n_workers=0, progress=False)
    assert isinstance(res, LabelResult)
    assert (res.n_computed, res.n_reused, res.failed) == (3, 0, [])
    assert [f.info["label_index"] for f in res.frames] == [0, 1, 2, 3] == res.indices
    assert res.keys[1] == res.keys[3] and len(set(res.keys)) == 3
    for a, f in zip(frames, res.frames):
        e, F = reference(a, EMT())
        assert f.get_potential_energy() == e
        np.testing.assert_array_equal(f.get_forces(), F)
        assert f.get_stress().shape == (6,)
        assert f.info["energy_reference"] == "ase:emt" and f.info["tag"] == a.info["tag"]
    files = sorted((store / "labels").glob("*.json"))
    assert len(files) == 3
    rec = json.loads(files[0].read_text())
    assert rec["oracle"]["name"] == "emt" and rec["energy_reference"] == "ase:emt"
    assert rec["timing"]["seconds"] > 0 and rec["timing"]["attempts"] == 1 and "ase" in rec["versions"]

    # a second call computes nothing, also for frames read back from extxyz (8 decimals)
    write(tmp_path / "frames.extxyz", frames)
    again = label_frames(read(tmp_path / "frames.extxyz", ":"), OracleConfig(name="emt"), store, n_workers=0,
                         progress=False)
    assert (again.n_computed, again.n_reused) == (0, 3)
    for f, g in zip(res.frames, again.frames):
        assert f.get_potential_energy() == g.get_potential_energy()
        np.testing.assert_array_equal(f.get_forces(), g.get_forces())
    # the store on its own rebuilds the labelled structures
    st = LabelStore(store)
    assert len(st) == 3 and len(st.frames()) == 3
    rebuilt = {f.info["label_key"]: f for f in st.frames()}
    np.testing.assert_array_equal(rebuilt[res.keys[0]].get_forces(), res.frames[0].get_forces())


def test_morse_oracle_and_stress_only_when_periodic(tmp_path):
    from ase.calculators.morse import MorsePotential

    kw = {"epsilon": 0.3, "r0": 2.5, "rho0": 4.0, "rcut1": 4.0, "rcut2": 5.0}
    mol = molecule("CH4")
    mol.rattle(0.02, seed=1)
    frames = cu_frames(1) + [mol]
    res = label_frames(frames, OracleConfig(name="morse", kwargs=kw), tmp_path / "s", n_workers=0, progress=False)
    for a, f in zip(frames, res.frames):
        e, F = reference(a, MorsePotential(**kw))
        assert f.get_potential_energy() == pytest.approx(e, abs=1e-12)
        np.testing.assert_allclose(f.get_forces(), F, atol=1e-12)
    assert "stress" in res.frames[0].calc.results and "stress" not in res.frames[1].calc.results
    with pytest.raises(LabellingError, match="frame 1 is not periodic"):
        label_frames(frames, OracleConfig(name="morse", kwargs=kw, stress=True), tmp_path / "s2", n_workers=0)


def test_factory_oracle(tmp_path):
    frames = cu_frames(2)
    res = label_frames(frames, OracleConfig(factory="test_labelling_factories:make_emt"), tmp_path / "s",
                       n_workers=0, progress=False)
    assert res.n_computed == 2
    assert res.frames[0].get_potential_energy() == reference(frames[0], EMT())[0]
    assert res.frames[0].info["energy_reference"] == "factory:test_labelling_factories:make_emt"


def test_user_keys_are_checked_against_the_store(tmp_path):
    frames = cu_frames(2)
    res = label_frames(frames, OracleConfig(name="emt"), tmp_path / "s", n_workers=0, keys=["f0", "f1"], progress=False)
    assert res.keys == ["f0", "f1"] and (tmp_path / "s" / "labels" / "f0.json").is_file()
    with pytest.raises(LabellingError, match="label 'f0' .* another structure"):
        label_frames(frames[::-1], OracleConfig(name="emt"), tmp_path / "s", n_workers=0, keys=["f0", "f1"])
    with pytest.raises(LabellingError, match="another oracle settings"):
        label_frames(frames, OracleConfig(name="morse"), tmp_path / "s", n_workers=0, keys=["f0", "f1"])
    with pytest.raises(LabellingError, match="usable as a file name"):
        label_frames(frames, OracleConfig(name="emt"), tmp_path / "s", n_workers=0, keys=["../x", "y"])
    with pytest.raises(LabellingError, match="keys has 1 entries for 2 frames"):
        label_frames(frames, OracleConfig(name="emt"), tmp_path / "s", n_workers=0, keys=["a"])


def test_bad_arguments_fail_before_work(tmp_path):
    o = OracleConfig(name="emt")
    with pytest.raises(LabellingError, match=r"frames\[1\] is a str"):
        label_frames([cu_frames(1)[0], "x"], o, tmp_path / "s")
    with pytest.raises(LabellingError, match="min_success=3 but only 2 frames"):
        label_frames(cu_frames(2), o, tmp_path / "s", min_success=3)
    with pytest.raises(LabellingError, match="retries must be an integer >= 0"):
        label_frames(cu_frames(2), o, tmp_path / "s", retries=-1)
    with pytest.raises(LabellingError, match="timeout must be a positive number"):
        label_frames(cu_frames(2), o, tmp_path / "s", timeout=0)
    with pytest.raises(LabellingError, match="scheduler must be None"):
        label_frames(cu_frames(2), o, tmp_path / "s", scheduler=42)
    (tmp_path / "file").write_text("x")
    with pytest.raises(LabellingError, match="not a directory"):
        label_frames(cu_frames(2), o, tmp_path / "file")


# -- failures -------------------------------------------------------------------------------------

def test_crashing_oracle_is_retried_then_recorded(tmp_path):
    frames = cu_frames(5, mode={1: "fail_once", 2: "fail", 3: "nan"})
    oracle = flaky(tmp_path)
    store = tmp_path / "s"
    res = label_frames(frames, oracle, store, n_workers=0, retries=2, progress=False)
    assert res.indices == [0, 1, 4] and res.n_computed == 3
    assert [f["index"] for f in res.failed] == [2, 3]
    assert res.failed[0]["attempts"] == 3 and "injected failure on frame 2" in res.failed[0]["error"]
    assert "non-finite energy" in res.failed[1]["error"]
    rec = LabelStore(store).get(res.keys[1])
    assert rec["timing"]["attempts"] == 2           # the one-off failure was retried once
    recorded = LabelStore(store).failures()
    assert sorted(r["key"] for r in recorded) == sorted([res.keys[2], res.keys[3]])
    assert all(r["attempts"] == 3 and r["error"] for r in recorded)

    # a re-run recomputes nothing that finished; failures are tried again by default...
    again = label_frames(frames, oracle, store, n_workers=0, retries=0, progress=False)
    assert (again.n_reused, again.n_computed, len(again.failed)) == (3, 0, 2)
    assert again.failed[0]["attempts"] == 1
    # ...or reported from the store without computing
    frames[2].info["mode"] = ""  # would now succeed, but retry_failed=False does not try
    kept = label_frames(frames, oracle, store, n_workers=0, retry_failed=False, progress=False)
    assert kept.n_computed == 0 and [f["index"] for f in kept.failed] == [2, 3]
    fixed = label_frames(frames, oracle, store, n_workers=0, progress=False)
    assert fixed.n_computed == 1 and [f["index"] for f in fixed.failed] == [3]
    assert len(LabelStore(store).failures()) == 1    # a success clears the earlier failure record


def test_min_success_error_names_counts_and_first_error(tmp_path):
    frames = cu_frames(3, mode={0: "fail", 1: "fail", 2: "fail"})
    with pytest.raises(LabellingError) as err:
        label_frames(frames, flaky(tmp_path), tmp_path / "s", n_workers=0, retries=1, progress=False)
    msg = str(err.value)
    assert "only 0 of 3 frames were labelled (min_success=1)" in msg and "3 failed" in msg
    assert "injected failure on frame 0" in msg and "failed" in msg
    mixed = frames[:1] + cu_frames(2)[1:]
    with pytest.raises(LabellingError, match=r"only 1 of 2 frames were labelled \(min_success=2\); 1 failed"):
        label_frames(mixed, flaky(tmp_path), tmp_path / "s2", n_workers=0, retries=0, min_success=2, progress=False)
    res = label_frames(mixed, flaky(tmp_path), tmp_path / "s2", n_workers=0, retries=0, progress=False)
    assert (res.n_reused, res.n_computed, res.n_failed) == (1, 0, 1)   # the success was kept before the error


def test_timeout_kills_a_slow_label(tmp_path):
    frames = cu_frames(2, mode={1: "slow"})
    t0 = time.perf_counter()
    res = label_frames(frames, flaky(tmp_path), tmp_path / "s", n_workers=0, retries=0, timeout=15, progress=False)
    assert time.perf_counter() - t0 < 90
    assert res.indices == [0] and res.frames[0].get_potential_energy() == reference(frames[0], EMT())[0]
    assert res.n_failed == 1 and "took longer than timeout=15 s" in res.failed[0]["error"]


# -- xTB through tblite ---------------------------------------------------------------------------

def test_xtb_molecule_and_periodic_box(tmp_path):
    pytest.importorskip("tblite.ase", reason="tblite not installed (pip install 'jaxuft[xtb]')")
    from tblite.ase import TBLite

    water = molecule("H2O")
    box = molecule("CH4")
    box.cell = [6.0, 6.0, 6.0]
    box.pbc = True
    box.center()
    frames = [water, box]
    for method in ("GFN1-xTB", "GFN2-xTB"):
        oracle = OracleConfig(name="xtb", kwargs={"method": method})
        res = label_frames(frames, oracle, tmp_path / method, n_workers=0, progress=False)
        assert res.n_computed == 2 and res.frames[0].info["energy_reference"] == f"tblite:{method}"
        e, F = reference(water, TBLite(method=method, verbosity=0))
        assert res.frames[0].get_potential_energy() == pytest.approx(e, abs=1e-8)
        np.testing.assert_allclose(res.frames[0].get_forces(), F, atol=1e-8)
        assert "stress" not in res.frames[0].calc.results
        assert res.frames[1].get_stress().shape == (6,) and np.all(np.isfinite(res.frames[1].get_stress()))
        assert np.all(np.isfinite(res.frames[1].get_forces()))
    # GFN1 and GFN2 have different energy zeros (tens of eV apart for water)
    e1 = LabelStore(tmp_path / "GFN1-xTB").frames()
    e2 = LabelStore(tmp_path / "GFN2-xTB").frames()
    assert {f.info["energy_reference"] for f in e1} == {"tblite:GFN1-xTB"}
    assert {f.info["energy_reference"] for f in e2} == {"tblite:GFN2-xTB"}


# -- Dask ------------------------------------------------------------------------------------------

def test_dask_two_workers_label_in_parallel_and_survive_a_killed_worker(tmp_path):
    pytest.importorskip("distributed")
    log = tmp_path / "calls.log"
    frames = cu_frames(6, mode={2: "kill_once"})
    res = label_frames(frames, flaky(tmp_path, delay=0.5, log=log), tmp_path / "s", n_workers=2, retries=2,
                       progress=False)
    assert res.n_failed == 0 and res.indices == list(range(6)) and res.n_computed == 6
    assert res.timings["where"] == "a local Dask cluster of 2 workers"
    for a, f in zip(frames, res.frames):
        e, F = reference(a, EMT())
        assert f.get_potential_energy() == e
        np.testing.assert_array_equal(f.get_forces(), F)
    store = LabelStore(tmp_path / "s")
    workers = {store.get(k)["timing"]["worker"] for k in res.keys}
    assert len(workers) >= 2, workers                                   # labelled in parallel
    assert store.get(res.keys[2])["timing"]["attempts"] == 2            # the worker died once, then it was redone
    tags = [line.split()[0] for line in log.read_text().splitlines()]
    assert sorted(tags) == [str(i) for i in range(6)]                   # every label finished exactly once


def test_sigkill_mid_labelling_then_rerun_reuses_labels(tmp_path):
    pytest.importorskip("distributed")
    frames = cu_frames(8)
    write(tmp_path / "frames.extxyz", frames)
    log = tmp_path / "calls.log"
    oracle = flaky(tmp_path, delay=0.6, log=log)
    store = tmp_path / "s"
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(HERE)!r})
        from ase.io import read
        from jaxuft.labelling import OracleConfig, label_frames
        if __name__ == "__main__":
            oracle = OracleConfig.model_validate_json({oracle.model_dump_json()!r})
            label_frames(read({str(tmp_path / 'frames.extxyz')!r}, ":"), oracle, {str(store)!r}, n_workers=1,
                         progress=False)
    """)
    (tmp_path / "run.py").write_text(script)
    proc = subprocess.Popen([sys.executable, str(tmp_path / "run.py")], cwd=tmp_path)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if len(list((store / "labels").glob("*.json"))) >= 3:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the labelling subprocess finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    done = {p.stem for p in (store / "labels").glob("*.json")}
    assert 3 <= len(done) < 8
    assert not list((store / "labels").glob(".*.tmp"))          # no half-written label survives
    computed_before = [line.split()[0] for line in log.read_text().splitlines()]

    res = label_frames(read(tmp_path / "frames.extxyz", ":"), oracle, store, n_workers=0, progress=False)
    assert res.n_reused == len(done) and res.n_computed == 8 - len(done) and res.n_failed == 0
    tags = [line.split()[0] for line in log.read_text().splitlines()]
    done_tags = {str(res.frames[i].info["tag"]) for i, k in enumerate(res.keys) if k in done}
    for t in done_tags:
        assert tags.count(t) == 1, (t, tags)                          # a finished label is never recomputed
    assert len(computed_before) >= len(done)

    fresh = label_frames(read(tmp_path / "frames.extxyz", ":"), OracleConfig(name="emt"), tmp_path / "fresh",
                         n_workers=0, progress=False)
    for f, g in zip(res.frames, fresh.frames):
        assert f.get_potential_energy() == g.get_potential_energy()
        np.testing.assert_array_equal(f.get_forces(), g.get_forces())
        np.testing.assert_array_equal(f.get_stress(), g.get_stress())


def test_existing_client_and_scheduler_address(tmp_path):
    distributed = pytest.importorskip("distributed")
    frames = cu_frames(3)
    with distributed.Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None) as client:
        res = label_frames(frames, OracleConfig(name="emt"), tmp_path / "s", scheduler=client, progress=False)
        assert res.n_computed == 3 and res.timings["where"].startswith("the given Dask client")
        assert client.status == "running"                              # a user's client is left open
        more = cu_frames(4)
        res2 = label_frames(more, OracleConfig(name="emt"), tmp_path / "s", scheduler=client.scheduler.address,
                            progress=False)
        assert (res2.n_reused, res2.n_computed) == (3, 1)
        assert res2.timings["where"].startswith("the Dask scheduler")
        for a, f in zip(more, res2.frames):
            assert f.get_potential_energy() == reference(a, EMT())[0]
