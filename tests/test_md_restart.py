"""Self-describing saved states: Simulation.restore continues bit-identically; old, truncated and
foreign files and mismatched restart structures give clear errors."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from test_md_common import cu_crystal, morse_cu, npt_starts, simulation

from jaxuft import md
from jaxuft.md.restart import check_structures


def _assert_identical(a, b):
    for k in a.data:
        np.testing.assert_array_equal(a.data[k], b.data[k], err_msg=k)


def _assert_same_state(s1, s2):
    for x, y in zip(jax.tree_util.tree_leaves(s1), jax.tree_util.tree_leaves(s2)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("kind", ["npt", "langevin"])
def test_restore_is_bit_identical(tmp_path, kind):
    """N steps + save + restore (a new Simulation from the file alone) + N steps == 2N steps, bit for bit
    (float64; NPT moves the cell, barostat and chains; Langevin uses the RNG keys)."""
    sim = simulation(kind)
    start = sim.init(npt_starts(), seed=7)
    end, whole = sim.run(start, n_steps=400, record_every=10)

    half, first = sim.run(start, n_steps=200, record_every=10)
    sim.save(half, tmp_path / "state.npz")
    sim2, state = md.Simulation.restore(tmp_path / "state.npz", morse_cu())
    end2, second = sim2.run(state, n_steps=200, record_every=10)

    _assert_identical(whole, md.Trajectory.concatenate([first, second]))
    _assert_same_state(end, end2)
    assert sim2.spec == sim.spec and sim2.ensemble == sim.ensemble and sim2.seed == 7
    assert sim2.restarted_from["step"] == 200 and sim2.fingerprint == sim.fingerprint
    # a second save records what it was restarted from
    sim2.save(end2, tmp_path / "state2.npz", extra={"note": "x"})
    sim3, _ = md.Simulation.restore(tmp_path / "state2.npz", morse_cu())
    desc = sim3.saved_description
    assert desc["restarted_from"]["path"].endswith("state.npz") and desc["extra"] == {"note": "x"}
    assert desc["step"] == [400, 400] and desc["ensemble"]["kind"] == sim.ensemble.kind


def test_checkpoint_every_chunk_resumes_a_stopped_run(tmp_path):
    """run(checkpoint=path) saves after every chunk: a run stopped after chunk 2 of 4 (an exception in
    on_chunk, as a kill would) continues from the file to the uninterrupted result."""
    sim = simulation("langevin")
    start = sim.init(npt_starts(), seed=2)
    end, whole = sim.run(start, n_steps=400, record_every=10)

    class Stop(Exception):
        pass

    seen = []

    def stop_after_two(state, frames):
        seen.append(frames.n_frames)
        if len(seen) == 2:
            raise Stop

    with pytest.raises(Stop):
        sim.run(start, n_steps=400, record_every=10, checkpoint=tmp_path / "ck.npz", on_chunk=stop_after_two)
    assert seen == [10, 10]
    sim2, state = md.Simulation.restore(tmp_path / "ck.npz", morse_cu())
    assert int(state.step.max()) == 200
    end2, rest = sim2.run(state, n_steps=200, record_every=10)
    _assert_same_state(end, end2)
    np.testing.assert_array_equal(whole.positions[:, 20:], rest.positions)


def test_restore_keeps_grown_capacities(tmp_path):
    sim = simulation("npt", capacity=200, model_capacity=150, images=(0, 0, 0))
    state, traj = sim.run(sim.init(npt_starts(), seed=1), n_steps=100, record_every=10)
    assert traj.report["capacity_regrows"] >= 1
    sim.save(state, tmp_path / "s.npz")
    sim2, state2 = md.Simulation.restore(tmp_path / "s.npz", morse_cu())
    assert sim2.spec == sim.spec
    with md.CompilationCounter() as cc:
        _, t = sim2.run(state2, n_steps=100, record_every=10)
    assert t.report["capacity_regrows"] == 0 and cc.count == 0  # same program as before: nothing new


def test_old_truncated_and_foreign_state_files(tmp_path):
    sim = simulation("langevin")
    state = sim.init(cu_crystal(), seed=0)
    md.save_state(state, tmp_path / "old.npz", seed=0)  # no description, as jaxuft wrote before
    restored, meta = md.load_state(tmp_path / "old.npz")  # old files still load
    assert int(meta["seed"]) == 0 and restored.positions.shape == state.positions.shape
    with pytest.raises(md.MDInputError, match="older jaxuft.*--restart together with --structure"):
        md.Simulation.restore(tmp_path / "old.npz", morse_cu())

    sim.save(state, tmp_path / "good.npz")
    blob = (tmp_path / "good.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(md.MDInputError, match="truncated"):
        md.Simulation.restore(tmp_path / "cut.npz", morse_cu())
    np.savez(tmp_path / "foreign.npz", positions=np.zeros((1, 2, 3)))
    with pytest.raises(md.MDInputError, match="not a jaxuft MD state: it lacks"):
        md.load_state(tmp_path / "foreign.npz")
    with pytest.raises(md.MDInputError, match="does not exist"):
        md.Simulation.restore(tmp_path / "missing.npz", morse_cu())
    with pytest.raises(md.MDInputError, match="dtype='float64'"):
        md.Simulation.restore(tmp_path / "good.npz", morse_cu("float32"))


def test_restart_structure_must_match(tmp_path):
    sim = simulation("langevin")
    start = cu_crystal(rattle=0.05, seed=3)
    state = sim.init(start, replicas=2, seed=0)
    sim.save(state, tmp_path / "s.npz")
    desc = md.Simulation.restore(tmp_path / "s.npz", morse_cu())[0].saved_description
    check_structures(desc, [start])  # the same structure passes
    other = cu_crystal(rattle=0.05, seed=4)  # same atoms and cell, other positions
    with pytest.raises(md.MDInputError, match="positions differ"):
        check_structures(desc, [other])
    with pytest.raises(md.MDInputError, match="cell"):
        check_structures(desc, [cu_crystal(a=3.9, rattle=0.05, seed=3)])
    fewer = start[:-1]
    with pytest.raises(md.MDInputError, match="atomic numbers"):
        check_structures(desc, [fewer])
    swapped = start.copy()
    swapped.numbers[0] = 28
    with pytest.raises(md.MDInputError, match="atomic numbers"):
        check_structures(desc, [swapped])
