"""Replica ensemble: 8 Langevin replicas of one structure in one compiled program.

    python examples/md_ensemble.py                       # toy Morse copper, seconds
    python examples/md_ensemble.py --model sevennet-0 --structure start.xyz --steps 2000

Writes one extxyz per replica, a compact npz and the final state (restartable).
"""

import argparse
from pathlib import Path

from ase.build import bulk
from ase.io import read

from jaxuft import md


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="morse")
    ap.add_argument("--structure", default=None)
    ap.add_argument("--replicas", type=int, default=8)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("-o", "--output", default="out/md_ensemble")
    args = ap.parse_args()

    atoms = read(args.structure) if args.structure else bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
    if args.model == "morse":
        from jaxuft.md.cli import builtin_morse

        potential = builtin_morse(atoms.numbers, "float32")
    else:
        import jaxuft

        potential = jaxuft.load(args.model)

    sim = md.Simulation(potential, md.Langevin(timestep=1.0, temperature=300.0, friction=0.01))
    state = sim.init(atoms, replicas=args.replicas, seed=0)  # same start, different velocity seeds
    state, traj = sim.run(state, n_steps=args.steps, record_every=50)

    out = Path(args.output)
    traj.write_extxyz(out)
    traj.save_npz(out / "trajectory.npz")
    sim.save(state, out / "state.npz")  # self-describing: md.Simulation.restore(path, potential) continues it
    rep = traj.report
    print(f"{rep['replicas']} x {rep['atoms']} atoms: {rep['atom_steps_per_s']:.3g} atom-steps/s, "
          f"{rep['compilations']} compilation(s) in {rep['compile_s']:.1f} s")
    print("mean temperature per replica (K):", traj.temperature.mean(axis=1).round(1))


if __name__ == "__main__":
    main()
