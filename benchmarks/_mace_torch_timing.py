"""mace-torch side of ``benchmarks/bench_mace.py``: time one ``.model`` on a few frames.

Runs INSIDE the mace reference venv (``tests/reference/make_venvs.sh mace``)::

    .venvs/mace/bin/python benchmarks/_mace_torch_timing.py MODEL FRAMES.traj \
        [--dtype float64|float32] [--repeats 10] [--warmup 2] [--threads N]

The model is loaded like ``tests/reference/mace_predict.py`` does it
(``torch.load(weights_only=False)`` + ``MACECalculator(models=model, device="cpu",
default_dtype=DTYPE)``; a float64 file run as float32 is cast by the calculator with
``model.float()``).  Unlike ``mace_reference.predict`` nothing is cached, the thread count
is set explicitly and only timings (plus energy/forces for a parity check) are produced.

Per frame it measures (wall clock, ``time.perf_counter``):

* ``first_s``    the first energy+forces model call (lazy initialisation, e3nn/TorchScript
                 profiling) -- the counterpart of jaxuft's compile time;
* ``ef_s``       median of ``--repeats`` energy+forces model calls on the prebuilt graph,
                 exactly as ``MACECalculator.calculate`` calls the model but with
                 ``compute_stress=False`` (batch clone + dtype cast included, neighbour
                 list excluded), after ``--warmup`` further warm-up calls;
* ``calc_s``     median of ``--repeats`` full ``calc.calculate(atoms)`` calls (neighbour
                 list + graph + energy + forces + stress), after one warm-up call.

Prints one JSON object on the last stdout line.
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

from mace.calculators import MACECalculator  # noqa: E402


def _times(fn, repeats: int) -> list:
    out = []
    for _ in range(max(repeats, 1)):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("frames")
    ap.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2, help="warm-up E+F calls after the first one")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch default)")
    args = ap.parse_args(argv)

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model = torch.load(args.model, weights_only=False, map_location="cpu")
    calc = MACECalculator(models=model, device="cpu", default_dtype=args.dtype)
    t_setup = time.perf_counter() - t0
    mdl = calc.models[0]
    mdtype = next(mdl.parameters()).dtype
    frames = read(args.frames, index=":")

    results = []
    for atoms in frames:
        atoms = atoms.copy()
        atoms.calc = None
        batch = calc._atoms_to_batch(atoms)  # pylint: disable=protected-access
        box = {}

        def ef_call():
            b = calc._clone_batch(batch)  # pylint: disable=protected-access
            for key in b.keys:
                v = b[key]
                if torch.is_tensor(v) and torch.is_floating_point(v):
                    b[key] = v.to(dtype=mdtype)
            res = mdl(b.to_dict(), compute_force=True, compute_stress=False)
            box["energy"] = float(res["energy"].sum())
            box["forces"] = res["forces"].detach()

        first = _times(ef_call, 1)[0]
        if args.warmup > 0:
            _times(ef_call, args.warmup)
        ef = _times(ef_call, args.repeats)
        calc.calculate(atoms)  # warm-up of the full path
        calc_t = _times(lambda: calc.calculate(atoms), args.repeats)
        results.append(
            {
                "n_atoms": len(atoms),
                "n_edges": int(batch["edge_index"].shape[1]),
                "first_s": first,
                "ef_s": statistics.median(ef),
                "ef_all_s": ef,
                "calc_s": statistics.median(calc_t),
                "energy": box["energy"],
                "forces": np.asarray(box["forces"].cpu().numpy(), dtype=np.float64).tolist(),
            }
        )

    print(
        json.dumps(
            {
                "dtype": args.dtype,
                "model_dtype": str(mdtype),
                "setup_s": t_setup,
                "torch_threads": torch.get_num_threads(),
                "torch_interop_threads": torch.get_num_interop_threads(),
                "versions": {
                    "torch": torch.__version__,
                    "mace": __import__("mace").__version__,
                    "e3nn": __import__("e3nn").__version__,
                },
                "frames": results,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
