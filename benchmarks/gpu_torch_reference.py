"""mace-torch on CUDA (the reference of benchmarks/gpu_suite.sh): energy+forces and ASE Langevin MD of one structure.

    python benchmarks/gpu_torch_reference.py MODEL.model OUT.json [FRAME.xyz]

Runs in a python with torch (CUDA) and mace-torch, not jaxuft.  Same protocol as jaxuft's
``jaxuft bench`` rows: energy+forces = median of 10 warm ``MACECalculator`` calls (neighbour list
included, as a user runs it), MD = ASE ``Langevin`` 300 K, 0.5 fs, 20 steps after 2 warm-up steps.
Without FRAME: rock-salt NaCl, 216 atoms (the suite's fallback system).
"""

import json
import os
import sys
import time
import warnings

os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
warnings.filterwarnings("ignore")


def main(argv) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    import numpy as np
    import torch
    from ase import units
    from ase.build import bulk
    from ase.io import read
    from ase.md.langevin import Langevin
    from mace.calculators import MACECalculator

    model_path, out = argv[0], argv[1]
    frame = argv[2] if len(argv) > 2 and argv[2] else None
    if not torch.cuda.is_available():
        print("gpu_torch_reference: torch sees no CUDA device", file=sys.stderr)
        return 3
    atoms = read(frame, index=0) if frame else bulk("NaCl", "rocksalt", a=5.64, cubic=True).repeat((3, 3, 3))
    t0 = time.perf_counter()
    atoms.calc = MACECalculator(model_paths=model_path, device="cuda", default_dtype="float32")
    atoms.get_forces()
    first = time.perf_counter() - t0
    times = []
    for k in range(10):
        atoms.positions[0, 0] += 1e-4 * (-1) ** k  # a new structure each call (the calculator caches results)
        t = time.perf_counter()
        atoms.get_forces()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    dyn = Langevin(atoms, 0.5 * units.fs, temperature_K=300, friction=0.01 / units.fs, rng=np.random.default_rng(0))
    dyn.run(2)
    torch.cuda.synchronize()
    t = time.perf_counter()
    dyn.run(20)
    torch.cuda.synchronize()
    md = (time.perf_counter() - t) / 20
    import mace

    res = {"model": model_path, "device": torch.cuda.get_device_name(0), "atoms": len(atoms),
           "system": os.path.basename(frame) if frame else "nacl-216", "first_call_s": first,
           "ef_ms": 1e3 * float(np.median(times)), "md_ms_per_step": 1e3 * md,
           "md_atom_steps_per_s": len(atoms) / md,
           "device_peak_gb": torch.cuda.max_memory_allocated() / 1024 ** 3,
           "versions": {"torch": torch.__version__, "mace": getattr(mace, "__version__", "?")}}
    with open(out, "w") as f:
        json.dump(res, f, indent=1)
    print(json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
