"""Differentiable MD costs: gradient memory (XLA memory analysis) and time per gradient for each rematerialisation mode, and the numbers of examples/differentiable_density.py.

    python benchmarks/bench_differentiable.py                 # memory table + both example fits
    python benchmarks/bench_differentiable.py --memory-only

Rows are appended to benchmarks/RESULTS.md.  ``remat=None`` (every step's state kept: plain
backpropagation through time, what a hand-written jax-md loop does) is the reference the
default ``"blocks"`` is compared with, in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))

from benchmarks.results import append  # noqa: E402
from jaxuft import md  # noqa: E402
from jaxuft.md.differentiable import program_memory  # noqa: E402
from jaxuft.models.pair import morse_config, morse_params  # noqa: E402
from jaxuft.potential import Potential  # noqa: E402


def memory_table(step_counts=(16, 64, 256)):
    from ase.build import bulk

    pot = Potential(morse_config([29], 5.0), morse_params(1, D=0.3429, a=1.3588, r0=2.866), dtype="float64")
    atoms = bulk("Cu", "fcc", a=3.837, cubic=True).repeat(2)
    atoms.rattle(0.05, seed=2)
    params = jax.tree_util.tree_map(jnp.asarray, pot.params)
    rows, temps = [], {}
    for steps in step_counts:
        for remat in (None, "steps", "blocks"):
            dmd = md.DifferentiableMD(pot, atoms, md.NVE(2.0), steps=steps, record_every=4, remat=remat)

            def loss(p, dmd=dmd):
                return jnp.mean(dmd(p, initial_temperature=300.0).frames["energy"])

            t0 = time.perf_counter()
            compiled = jax.jit(jax.grad(loss)).lower(params).compile()
            t_compile = time.perf_counter() - t0
            mem = program_memory(compiled)
            jax.block_until_ready(compiled(params))
            t0 = time.perf_counter()
            for _ in range(3):
                jax.block_until_ready(compiled(params))
            t_grad = (time.perf_counter() - t0) / 3
            temps[(steps, remat)] = mem.temp
            rows.append([steps, str(remat), dmd.n_blocks, round(mem.temp / 2**20, 3), round(t_compile, 1),
                         round(1000 * t_grad, 1)])
            print(rows[-1], flush=True)
    for row in rows:
        row.append(round(temps[(row[0], None)] / temps[(row[0], row[1] if row[1] != "None" else None)], 2))
    lo, hi = step_counts[0], step_counts[-1]
    notes = (f"32 Cu atoms (Morse, float64), NVE 2 fs, record_every 4; gradient of the mean potential energy "
             f"w.r.t. params; temp = XLA temporaries of the compiled gradient; growth {lo} -> {hi} steps "
             f"({hi // lo}x): None {temps[(hi, None)] / temps[(lo, None)]:.1f}x, steps "
             f"{temps[(hi, 'steps')] / temps[(lo, 'steps')]:.1f}x, blocks {temps[(hi, 'blocks')] / temps[(lo, 'blocks')]:.1f}x; "
             f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (times are noisy; memory is exact)")
    append("Differentiable MD: gradient memory by rematerialisation mode (bench_differentiable.py)",
           ["steps", "remat", "blocks", "temp MiB", "compile s", "grad ms", "memory saved vs None"], rows, notes)


def _run_example(method):
    import differentiable_density as ex

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        ex.main(["--method", method, "--json", out])
        with open(out) as fh:
            return json.load(fh)


def example_rows(methods, results=None):
    """Rows of the example's runs: run it per method, or read the ``--json`` files it wrote."""
    import differentiable_density as ex

    rows = []
    results = results or [_run_example(m) for m in methods]
    for res in results:
        method, code = res["method"], 0 if res["converged"] else 1
        curve = res["curve"]
        rows.append([
            method, len(curve), res["md_steps"], f"{curve[0]['loss']:.3e}", f"{curve[-1]['loss']:.3e}",
            round(curve[0]["density"], 3), round(curve[-1]["density"], 3), round(res["delta"], 4),
            f"{res['check_density']:.3f} ± {res['check_error']:.3f}",
            round(res["wall_s"], 1), round(res["total_wall_s"], 1),
            f"{res['gradient_memory_bytes'] / 2**20:.2f}" if "gradient_memory_bytes" in res else "-",
            "yes" if code == 0 else "NO",
        ])
    notes = (f"examples/differentiable_density.py: fit delta (added to the Morse r0) so that the 300 K, 1 bar density "
             f"of 32 Cu atoms (2 replicas) matches {ex.TARGET_DENSITY} g/cm3; loss = squared relative density error; "
             f"gradient descent, lr {results[0].get('lr')}; 'check' = an ordinary 4 ps NPT run with "
             f"the fitted delta (mean ± block error of 8 blocks); fit s = the optimisation loop incl. compiling the "
             f"gradient; load average at the end of each run: "
             + ", ".join(f"{r['method']} {r.get('load_average', float('nan')):.1f}" for r in results)
             + f" on {os.cpu_count()} cores (shared machine: wall times are noisy)")
    append("Differentiable MD: fitting a density by gradient descent through MD (examples/differentiable_density.py)",
           ["method", "iterations", "MD steps", "loss first", "loss last", "density first", "density last",
            "delta Å", "check density g/cm3", "fit s", "total s", "gradient MiB", "converged"], rows, notes)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--memory-only", action="store_true")
    ap.add_argument("--example-only", action="store_true")
    ap.add_argument("--methods", default="bptt,difftre")
    ap.add_argument("--example-json", nargs="*", help="record these result files of examples/differentiable_density.py "
                    "--json instead of running it again")
    args = ap.parse_args(argv)
    if not args.example_only:
        memory_table()
    if not args.memory_only:
        results = None
        if args.example_json:
            results = []
            for path in args.example_json:
                with open(path) as fh:
                    results.append(json.load(fh))
        example_rows(args.methods.split(","), results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
