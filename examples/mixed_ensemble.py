"""Batched ensemble studies: different systems in one compiled program, a replica-exchange temperature ladder,
and ensemble statistics with autocorrelation-aware error bars.

    python examples/mixed_ensemble.py                          # built-in Morse toy potential, CPU, a few minutes
    python examples/mixed_ensemble.py --model sevennet-0 --steps 100 --dtype float32   # the foundation model

1. **Mixed batch**: the paper's 197-atom DES frame (if ``../shared/paper-data`` or
   ``$JAXUFT_PAPER_DATA`` is there), a box of 64 water molecules (192 atoms) and a 180-atom
   Cu(111) slab run as one padded program (``Simulation.init([frame, water, slab])``), then each
   system alone for the same steps, in the same process: the throughput of the batch against
   one-by-one, with and without compilation, and the largest difference between a system's
   frames in the batch and alone (float64: round-off).  ``--small`` uses 8 waters and a
   36-atom slab instead, to show what padding costs when sizes differ.

The toy Morse potential binds every pair (H-H at 0.62 Å) and lets a molecular liquid clump; the
safety stops are relaxed for it so that every system runs all steps (this example is about
batching and statistics, not about the toy's physics).
2. **Replica exchange**: a ladder of 4 temperatures on the slab, swaps every ``--exchange``
   steps; acceptance per neighbour pair.
3. **Ensemble statistics** of every run: mean ± error (integrated autocorrelation time) of
   energy, temperature, pressure, density and g(r); figures in ``-o``.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.build import fcc111, molecule

from jaxuft import md
from jaxuft.analysis.ensemble import format_statistics, run_statistics

PAPER_FRAME = Path(os.environ.get("JAXUFT_PAPER_DATA", Path(__file__).resolve().parents[2] / "shared" / "paper-data")) \
    / "chclca" / "test" / "independent.xyz"


def water_box(n_side: int = 4, spacing: float = 3.1) -> Atoms:
    """``n_side**3`` water molecules on a cubic grid (~1 g/cm³ at 3.1 Å), randomly oriented, periodic."""
    rng = np.random.default_rng(0)
    box = Atoms(cell=[n_side * spacing] * 3, pbc=True)
    for i in range(n_side):
        for j in range(n_side):
            for k in range(n_side):
                w = molecule("H2O")
                w.rotate(rng.uniform(0, 360), rng.normal(size=3) + 1e-3, center="COM")
                w.translate((np.array([i, j, k]) + 0.5) * spacing - w.get_center_of_mass())
                box += w
    return box


def cu_slab(size=(6, 6, 5)) -> Atoms:
    slab = fcc111("Cu", size, vacuum=5.0)
    slab.pbc = True  # a periodic cell with vacuum: the systems of one batch share pbc
    return slab


def systems(small: bool = False) -> dict:
    out = {}
    if PAPER_FRAME.exists():
        from ase.io import read

        out["paper frame"] = read(PAPER_FRAME, 0)
    else:
        print(f"(paper data not found at {PAPER_FRAME}: the batch runs without the DES frame)")
    out["water box"] = water_box(2 if small else 4)
    out["Cu slab"] = cu_slab((3, 3, 4) if small else (6, 6, 5))
    return out


def potential_for(model: str, numbers, dtype: str):
    if model == "morse":
        from jaxuft.md.cli import builtin_morse

        return builtin_morse(numbers, dtype)
    import jaxuft

    return jaxuft.load(model, dtype=dtype)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="morse", help="'morse' (built-in toy) or a model name/directory")
    ap.add_argument("--dtype", default="float64")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--small", action="store_true", help="8 waters and a 36-atom slab (sizes far from the frame's)")
    ap.add_argument("--record-every", type=int, default=20)
    ap.add_argument("--exchange", type=int, default=100, help="steps between replica-exchange attempts")
    ap.add_argument("-o", "--output", default="out/mixed_ensemble")
    args = ap.parse_args()
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    named = systems(args.small)
    names, frames = list(named), list(named.values())
    pot = potential_for(args.model, np.concatenate([a.numbers for a in frames]), args.dtype)
    ensemble = md.Langevin(timestep=0.5, temperature=300.0, friction=0.02)
    # the toy Morse clumps molecular liquids (finite at r = 0): no distance stop, a high temperature limit
    safety = md.Safety(min_distance=0.0, max_temperature=50_000.0) if args.model == "morse" else md.Safety()
    seeds = list(range(1, len(frames) + 1))
    run_kw = dict(n_steps=args.steps, record_every=args.record_every, progress=False)

    # ---- 1. one mixed batch against the systems one by one (same process, same steps) --------------------
    sim = md.Simulation(pot, ensemble, chunk_steps=args.steps // 2, safety=safety)
    state = sim.init(frames, seed=seeds)
    state, mixed = sim.run(state, **run_kw)
    rep = mixed.report
    alone = []
    for k, atoms in enumerate(frames):
        s1 = md.Simulation(pot, ensemble, chunk_steps=args.steps // 2, safety=safety)
        st = s1.init(atoms, seed=seeds[k])
        alone.append(s1.run(st, **run_kw)[1])
    total_atoms = sum(len(a) for a in frames)
    wall_alone = sum(t.report["wall_s"] for t in alone)
    compute_alone = sum(t.report["wall_s"] - t.report["compile_s"] for t in alone)
    compute_mixed = rep["wall_s"] - rep["compile_s"]
    print(f"\n== mixed batch: {', '.join(f'{n} ({len(a)} atoms)' for n, a in zip(names, frames))}; "
          f"padded to {rep['padded_atoms']} atoms, {args.steps} steps, {args.model} {args.dtype}")
    print(f"   one program:  {rep['compilations']} compilation(s), {rep['compile_s']:.1f} s compiling, "
          f"{compute_mixed:.1f} s running -> {rep['atom_steps_per_s']:.3g} atom-steps/s")
    print(f"   one by one:   {sum(t.report['compilations'] for t in alone)} compilation(s), "
          f"{sum(t.report['compile_s'] for t in alone):.1f} s compiling, {compute_alone:.1f} s running -> "
          f"{args.steps * total_atoms / compute_alone:.3g} atom-steps/s")
    stops = [s for s in rep["stops"] if s["status"] != "running"]
    if stops:
        print(f"   stopped in the batch: {[(names[s['replica']], s['message']) for s in stops]}")
    print(f"   mixed / one-by-one throughput: {compute_alone / compute_mixed:.2f}x without compilation, "
          f"{wall_alone / rep['wall_s']:.2f}x including it")
    for k, name in enumerate(names):
        dev = np.max(np.abs(mixed.system(k).positions - alone[k].positions), axis=(0, 2, 3))  # per frame
        grow = int(np.argmax(dev > 1e-6)) if np.any(dev > 1e-6) else None
        caps = rep["systems"][k]
        print(f"   {name:12s} max |x_batch - x_alone|: {dev[0]:.1e} Å after {args.record_every} steps, {dev[-1]:.1e} Å "
              f"after {args.steps}" + (f" (round-off amplified by chaos past 1e-6 Å at step "
                                       f"{(grow + 1) * args.record_every})" if grow is not None else "")
              + f"; own capacities: {caps['capacity']} pairs, {caps['model_capacity']} model edges, "
              f"{caps['regrows']} regrowth(s)")
    mixed.write_extxyz(out / "mixed")  # one file per system, trimmed to its atoms

    # ---- 2. replica exchange over a temperature ladder on the slab ---------------------------------------------
    ladder = [300.0, 340.0, 385.0, 435.0]
    rex = md.Simulation(pot, md.Langevin(0.5, ladder, 0.02), replica_exchange=args.exchange, safety=safety)
    st = rex.init(cu_slab((3, 3, 4)), replicas=len(ladder), seed=7)
    st, ladder_traj = rex.run(st, **{**run_kw, "n_steps": args.steps - args.steps % args.exchange})
    print(f"\n== replica exchange on a 36-atom Cu slab, T = {ladder} K, attempts every {args.exchange} steps")
    for pair in ladder_traj.report["replica_exchange"]["total"]["pairs"]:
        print(f"   {pair['pair'][0]:g} <-> {pair['pair'][1]:g} K: {pair['accepted']}/{pair['attempts']} accepted, "
              f"mean Metropolis probability {pair['mean_probability']:.3f}")
    print(f"   starting configuration now at each temperature: {ladder_traj.report['replica_exchange']['total']['walkers']}")

    # ---- 3. ensemble statistics ------------------------------------------------------------------------------
    print("\n== ensemble statistics (last 80 % of the frames; error = standard error with the integrated "
          "autocorrelation time)")
    for label, traj, per in (("mixed", mixed, False), ("ladder", ladder_traj, True)):
        stats = run_statistics(traj, per_replica=per, plot_dir=out / label, rdf_frames=20)
        for group, s in stats.items():
            print(f"-- {label}: {group}")
            print("   " + (format_statistics(s).replace("\n", "\n   ") if "observables" in s else s["skipped"]))
    print(f"\nfigures and frames in {out}; total {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
