"""Run a mace-torch ``.model`` file on frames through mace's own ``MACECalculator``.

Runs INSIDE the mace reference venv::

    .venvs/mace/bin/python tests/reference/mace_predict.py MODEL IN.xyz OUT.npz \
        [--dtype float64|float32] [--head NAME] [--repeats 3]

IN may be any file ``ase.io.read(IN, index=":")`` reads (extxyz, ASE .traj, ...).  Use
.traj for bit-exact float64 positions/cells (extxyz text rounds positions to 1e-8 Å).
Frames with ``pbc=True`` (periodic) and ``pbc=False`` (molecules) are both fine.

The model is loaded with ``torch.load(MODEL, weights_only=False, map_location="cpu")`` and
handed to ``MACECalculator(models=model, default_dtype=DTYPE, head=HEAD)``; a float64 file
run with ``--dtype float32`` is cast by the calculator (``model.float()``), and vice versa.

OUT.npz holds, for frame ``i`` (zero padded, ``f0000`` ...), keys ``f0000.<name>``:

  energy            ()            eV, total energy incl. E0s   (calc.results["energy"])
  forces            (n, 3)        eV/Å
  stress            (6,)          eV/Å^3, ASE convention: (1/V) dE/dstrain, pressure = -trace/3,
                                  Voigt order xx yy zz yz xz xy   (calc.results["stress"])
  stress_3x3        (3, 3)        same, full symmetric matrix
  node_energy       (n,)          per-atom energy INCLUDING E0; sums to ``energy``
                                  (calc.results["energies"]; always computed in float64 by
                                  ScaleShiftMACE, even for float32 models)
  node_energy_no_e0 (n,)          per-atom energy WITHOUT E0 (calc.results["node_energy"],
                                  mace's own, confusingly named, key)
  descriptors       (n, C*L')     calc.get_descriptors(atoms, invariants_only=True): the 0e
                                  channels of EVERY interaction layer concatenated
                                  (layer 0 first); C = #0e channels (128 for MP models),
                                  L' = num_interactions  -> (n, 256) for the MP models
  descriptors_full  (n, D)        calc.get_descriptors(atoms, invariants_only=False): all
                                  node features of all layers concatenated (the last layer
                                  has scalars only): mp0-medium -> 512 + 128 = 640
  time_ef_s         ()            median wall time of one model call computing energy+forces
                                  (compute_stress=False) on the prebuilt graph, as the
                                  calculator calls it (warm-up call excluded)
  time_calc_s       ()            median wall time of one full calc.calculate() (graph
                                  building + energy + forces + stress), warm-up excluded
  numbers, positions, cell, pbc   the frame as read (for checking)
  mace_cell         (3, 3)        the cell mace's graph actually used: for non-periodic
                                  directions mace substitutes 5 * r_max * (max|pos| + 1) * e_k
                                  (mace/data/neighborhood.py), and the stress is divided by
                                  |det(mace_cell)| -- see below

plus top-level keys: ``n_frames``, ``meta`` (JSON string: head, heads, dtype, versions, ...).
Stress of a non-periodic frame is NOT zero: mace divides dE/dstrain by |det(mace_cell)|, a
huge fake box, so molecules get tiny (~1e-7 eV/Å^3), physically meaningless numbers.  Compare
stress on fully periodic frames only (or rescale with mace_cell).  Timings are wall times on
a shared machine; TorchScript (e3nn codegen) re-profiles on new shapes, hence the warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings

os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
warnings.filterwarnings("ignore", category=UserWarning)
warnings.filterwarnings("ignore", category=FutureWarning)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from ase.io import read  # noqa: E402
from ase.stress import voigt_6_to_full_3x3_stress  # noqa: E402

from mace.calculators import MACECalculator  # noqa: E402


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(max(repeats, 1)):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(statistics.median(times))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("frames")
    ap.add_argument("output")
    ap.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    ap.add_argument("--head", default=None)
    ap.add_argument("--repeats", type=int, default=5, help="timing repeats (0: no timing)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    args = ap.parse_args(argv)

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    model = torch.load(args.model, weights_only=False, map_location="cpu")
    heads = list(getattr(model, "heads", ["Default"]))
    if args.head is not None and args.head not in heads:
        # MACECalculator would silently fall back to the last head; refuse instead
        print(f"head {args.head!r} not in model heads {heads}", file=sys.stderr)
        return 2
    kw = {} if args.head is None else {"head": args.head}
    calc = MACECalculator(models=model, device="cpu", default_dtype=args.dtype, **kw)
    frames = read(args.frames, index=":")

    out: dict = {"n_frames": np.array(len(frames))}
    for i, atoms in enumerate(frames):
        atoms = atoms.copy()
        atoms.calc = None
        p = f"f{i:04d}."
        calc.calculate(atoms)
        r = dict(calc.results)
        out[p + "energy"] = np.array(r["energy"], dtype=np.float64)
        out[p + "forces"] = np.asarray(r["forces"])
        out[p + "stress"] = np.asarray(r["stress"])
        out[p + "stress_3x3"] = voigt_6_to_full_3x3_stress(np.asarray(r["stress"]))
        out[p + "node_energy"] = np.asarray(r["energies"])
        out[p + "node_energy_no_e0"] = np.asarray(r["node_energy"])
        out[p + "descriptors"] = np.asarray(calc.get_descriptors(atoms, invariants_only=True))
        out[p + "descriptors_full"] = np.asarray(
            calc.get_descriptors(atoms, invariants_only=False)
        )
        out[p + "numbers"] = atoms.numbers.copy()
        out[p + "positions"] = atoms.positions.copy()
        out[p + "cell"] = np.asarray(atoms.cell[:])
        out[p + "pbc"] = atoms.pbc.copy()
        batch = calc._atoms_to_batch(atoms)  # pylint: disable=protected-access
        out[p + "mace_cell"] = batch["cell"].detach().cpu().numpy().reshape(-1, 3, 3)[0]

        if args.repeats > 0:
            # energy + forces exactly as MACECalculator.calculate calls the model, minus stress
            mdl = calc.models[0]
            mdtype = next(mdl.parameters()).dtype

            def ef_call():
                b = calc._clone_batch(batch)  # pylint: disable=protected-access
                for key in b.keys:
                    v = b[key]
                    if torch.is_tensor(v) and torch.is_floating_point(v):
                        b[key] = v.to(dtype=mdtype)
                res = mdl(b.to_dict(), compute_force=True, compute_stress=False)
                return float(res["energy"].sum()), res["forces"]

            out[p + "time_ef_s"] = np.array(_median_time(ef_call, args.repeats))
            out[p + "time_calc_s"] = np.array(
                _median_time(lambda: calc.calculate(atoms), args.repeats)
            )

    meta = {
        "model": os.path.abspath(args.model),
        "dtype": args.dtype,
        "model_dtype": str(next(calc.models[0].parameters()).dtype),
        "head": calc.head,
        "heads": heads,
        "r_max": float(calc.r_max),
        "atomic_numbers": [int(z) for z in calc.z_table.zs],
        "num_interactions": int(calc.models[0].num_interactions),
        "torch_threads": torch.get_num_threads(),
        "stress_layout": "voigt6 xx yy zz yz xz xy, ASE sign; stress_3x3 full",
        "versions": {
            "torch": torch.__version__,
            "mace": __import__("mace").__version__,
            "e3nn": __import__("e3nn").__version__,
        },
    }
    out["meta"] = np.array(json.dumps(meta))
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    tmp = args.output + ".tmp.npz"
    np.savez(tmp, **out)
    os.replace(tmp, args.output)
    print(json.dumps({k: v for k, v in meta.items() if k != "atomic_numbers"}))
    if args.repeats > 0:
        for i in range(len(frames)):
            p = f"f{i:04d}."
            print(
                f"frame {i}: n_atoms={len(out[p + 'numbers'])} "
                f"time_ef_s={float(out[p + 'time_ef_s']):.4f} "
                f"time_calc_s={float(out[p + 'time_calc_s']):.4f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
