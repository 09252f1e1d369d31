"""The periodic protocol written out by hand with the library (what `jaxuft run` automates).

    python examples/periodic_by_hand.py                 # toy: Morse "foundation", EMT oracle, 32 Cu atoms, ~1 min
    python examples/periodic_by_hand.py --paper         # SevenNet-0 + GFN1-xTB on the paper's frame (pip install 'jaxuft[xtb]')

Each round continues the MD state with the newest params (nothing recompiles), labels the last
frames with the oracle and fine-tunes on every label so far.
"""

import argparse
import os

from ase.build import bulk
from ase.io import read

import jaxuft
from jaxuft import md
from jaxuft.finetune import FinetuneConfig, finetune_potential
from jaxuft.labelling import OracleConfig, label_frames


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--paper", action="store_true", help="SevenNet-0 + GFN1-xTB on the paper's DES frame")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--store", default="labels_by_hand", help="label store directory (reused on a rerun)")
    args = ap.parse_args()

    if args.paper:
        data = os.environ.get("JAXUFT_PAPER_DATA", "../shared/paper-data")
        atoms = read(f"{data}/chclca/test/independent.xyz", 0)
        pot = jaxuft.load("sevennet-0")
        oracle = OracleConfig(name="xtb", kwargs={"method": "GFN1-xTB"})
        ensemble = md.NPT(timestep=0.5, temperature=300, pressure=1.0)
    else:
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 2, 2))
        atoms.rattle(0.05, seed=0)
        from jaxuft.md.cli import builtin_morse

        pot = builtin_morse(atoms.numbers, "float64")
        oracle = OracleConfig(name="emt")
        ensemble = md.Langevin(timestep=2.0, temperature=600, friction=0.02)

    sim = md.Simulation(pot, ensemble)
    state = sim.init(atoms, replicas=1, seed=0)
    params, labelled = pot.params, []
    config = FinetuneConfig(epochs=10, e0s="lstsq", progress=False)  # refit E0s: the oracle's zero differs
    for k in range(1, args.rounds + 1):
        state, traj = sim.run(state, params, n_steps=args.steps, record_every=args.steps // 4)
        new = label_frames(traj.atoms(0)[-2:], oracle, args.store, n_workers=2 if args.paper else 0).frames
        labelled += new
        result = finetune_potential(pot.with_params(params), labelled, config)
        params = result.potential.params
        print(f"round {k}: {len(labelled)} labels; MD compilations this round: {traj.report['compilations']}; "
              f"{result.manifest['outcome']}")


if __name__ == "__main__":  # needed: Dask's local workers import this file
    main()
