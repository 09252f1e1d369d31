"""One trajectory in segments, new model parameters between segments, a live monitor.

This is the shape of the paper's "periodic" workflow: run a segment, (fine-tune),
continue from the same state with the new params -- nothing recompiles.  A per-atom
monitor on the model's descriptors is evaluated inside the compiled scan at every
recorded frame and stops a replica when it exceeds a threshold that is passed as a
runtime array (changing it does not recompile either).

    python examples/md_periodic_segments.py

Every chunk is checkpointed (``on_chunk``), so a killed run continues from its last chunk with
``md.Simulation.restore`` -- shown at the end.
"""

import tempfile
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from ase.build import bulk

from jaxuft import md
from jaxuft.md.cli import builtin_morse

atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
potential = builtin_morse(atoms.numbers, "float32")


def monitor(params, graph, extra):
    """Distance of each atom's descriptor from a reference mean (a stand-in for a Q residual)."""
    desc = potential.node_outputs(params, graph)["descriptors"]  # (n_atoms + 1, F)
    score = jnp.sum((desc - extra["mean"]) ** 2, axis=-1)  # per atom; padding row is trimmed
    return {"score": score, "max_score": jnp.max(jnp.where(graph.node_mask, score, 0.0))}


def too_far(obs, extra):
    return obs["max_score"] > extra["threshold"]


sim = md.Simulation(potential, md.NPT(timestep=1.0, temperature=300.0, pressure=1.0),
                    observables=monitor, stop_if=too_far)
state = sim.init(atoms, replicas=2, seed=1)
ref_mean = jnp.asarray(potential.descriptors(atoms).mean(axis=0))
extra = {"mean": ref_mean, "threshold": jnp.asarray(1e6)}

checkpoint = Path(tempfile.mkdtemp()) / "state.npz"
params = potential.params
for segment in range(3):
    with md.CompilationCounter() as cc:
        state, traj = sim.run(state, params, n_steps=500, record_every=50, extra=extra,
                              on_chunk=lambda st, frames: sim.save(st, checkpoint, extra={"segment": segment}))
    vol = np.abs(np.linalg.det(traj.cell)).mean(axis=1) / len(atoms)
    print(f"segment {segment}: V/atom {vol.round(3)} Å^3, max score {traj.max_score.max():.3g}, "
          f"compilations {cc.count}, stops {[s['status'] for s in traj.report['stops']]}")
    # "fine-tune": here just a slightly deeper well; real code would call jaxuft.finetune
    params = dict(params, D=params["D"] * 1.02)

# continue from the last checkpoint with nothing but the file and the potential (hooks are passed again)
sim2, state2 = md.Simulation.restore(checkpoint, potential, observables=monitor, stop_if=too_far)
print(f"restored at step {int(state2.step.max())} (segment {sim2.saved_description['extra']['segment']}), "
      f"ensemble {sim2.ensemble.kind}, capacity {sim2.spec.capacity}")
state2, _ = sim2.run(state2, params, n_steps=100, record_every=50, extra=extra)
