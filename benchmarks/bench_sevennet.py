"""SevenNet-0 energy+forces: jaxuft vs sevenn's own ASE calculator, same weights, one run.

jaxuft loads the model zoo's ``sevennet-0`` (converted from the checkpoint inside the
``sevenn`` wheel; fetched into the cache if needed) in float32; sevenn runs
``SevenNetCalculator("7net-0")`` (float32, e3nn backend, CPU) in the reference venv
(``tests/reference/make_venvs.sh sevenn``) through ``tests/reference/sevenn_ref.py``, in a
subprocess that runs after the JAX timings, never concurrently.

Structures: frame 0 of the paper's ``chclca/test/independent.xyz`` (197 atoms; skipped with
a note when the paper data is absent) and a rattled 2x2x2 conventional NaCl cell (64 atoms).

Timings (wall clock, median of ``--repeats`` warm calls; the first call is reported apart):

* jaxuft compile   first call on the padded graph (trace + XLA compile), in seconds;
* jaxuft device    ``pot.compiled("efs")`` on the prebuilt device graph (energy, forces, stress);
* jaxuft calc      ``atoms.calc = jaxuft.Calculator(pot)``; energy + forces with the calculator's
                   results reset each time (host neighbour list + padding + transfer + E/F/S);
* sevenn calc      ``SevenNetCalculator``: energy + forces with results reset each time
                   (matscipy neighbour list + graph + E/F/S; sevenn always computes stress);
* ratio            sevenn calc / jaxuft calc (> 1: jaxuft faster).

    python benchmarks/bench_sevennet.py [--repeats 5] [--no-record]

Appends a table to benchmarks/RESULTS.md unless ``--no-record``.  JAX runs on whatever
device it finds (``JAX_PLATFORMS=cpu`` forces the CPU); sevenn always runs on the CPU.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "reference"))
PAPER = ROOT / ".." / "shared" / "paper-data" / "chclca" / "test" / "independent.xyz"


def _structures():
    from ase.build import bulk
    from ase.io import read

    out, notes = [], []
    if PAPER.is_file():
        out.append(("ChCl-CA frame 0", read(PAPER, 0)))
    else:
        notes.append(f"paper frame skipped: {PAPER} not found")
    nacl = bulk("NaCl", "rocksalt", a=5.64, cubic=True) * (2, 2, 2)
    nacl.rattle(0.05, seed=0)
    out.append(("NaCl 2x2x2 rattled", nacl))
    return out, notes


def _median(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _load_potential():
    import jaxuft
    from jaxuft.checkpoints import zoo

    try:
        return jaxuft.load("sevennet-0", dtype="float32"), "model zoo"
    except zoo.FetchError:
        import sevenn_reference
        from jaxuft.checkpoints.sevennet import convert_sevennet
        from jaxuft.checkpoints.torch_pickle import read_checkpoint

        cfg, params = convert_sevennet(read_checkpoint(sevenn_reference.sevennet0_checkpoint()))
        return jaxuft.Potential(cfg, params, dtype="float32"), "reference venv checkpoint"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-record", action="store_true")
    a = ap.parse_args(argv)

    import jax

    import jaxuft

    structures, notes = _structures()
    pot, source = _load_potential()
    rows = []
    jax_times = {}
    for label, atoms in structures:
        graph = pot.graph(atoms)
        fn = pot.compiled("efs")
        t = time.perf_counter()
        jax.block_until_ready(fn(pot.params, graph))
        compile_s = time.perf_counter() - t
        device_s = _median(lambda: jax.block_until_ready(fn(pot.params, graph)), a.repeats)
        calc = jaxuft.Calculator(pot)
        b = atoms.copy()
        b.calc = calc

        def calc_once():
            calc.reset()
            b.get_potential_energy()
            b.get_forces()

        calc_once()  # the calculator's own capacity bucket may differ: compile outside the timing
        calc_s = _median(calc_once, a.repeats)
        jax_times[label] = (compile_s, device_s, calc_s)

    import sevenn_reference

    if sevenn_reference.sevenn_python() is None:
        notes.append("sevenn reference venv missing: run tests/reference/make_venvs.sh sevenn")
        ref = [None] * len(structures)
    else:
        ref = sevenn_reference.predict(sevenn_reference.sevennet0_checkpoint(), [s for _, s in structures],
                                       dtype="float32", repeats=a.repeats, threads=os.cpu_count() or 1)  # fmt: skip
    for (label, atoms), r in zip(structures, ref):
        compile_s, device_s, calc_s = jax_times[label]
        sev = r["time_s"] if r else float("nan")
        rows.append([label, len(atoms), f"{compile_s:.1f}", f"{device_s * 1e3:.0f}", f"{calc_s * 1e3:.0f}",
                     f"{sev * 1e3:.0f}" if r else "n/a", f"{sev / calc_s:.1f}x" if r else "n/a"])  # fmt: skip
    meta = ref[0]["meta"] if ref and ref[0] else {}
    try:
        load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover
        load = "n/a"
    notes = [
        f"SevenNet-0 float32 ({source}); energy+forces, medians of {a.repeats} warm calls; "
        f"sevenn {meta.get('sevenn', '?')} / torch {meta.get('torch', '?')} / e3nn {meta.get('e3nn', '?')} "
        f"with {meta.get('threads', '?')} threads; jax {jax.__version__} on {jax.devices()[0].platform}; "
        f"load average {load} (shared machine: compare ratios, not absolute times)",
        *notes,
    ]
    header = ["structure", "atoms", "jaxuft compile s", "jaxuft device ms", "jaxuft calc ms", "sevenn calc ms",
              "ratio sevenn/jaxuft"]  # fmt: skip
    if a.no_record:
        print("\n".join(notes))
        print(" | ".join(header))
        for r in rows:
            print(" | ".join(map(str, r)))
    else:
        from benchmarks.results import append

        append("SevenNet-0: jaxuft vs sevenn ASE calculator (energy+forces)", header, rows, notes="\n".join(notes))
    return 0


if __name__ == "__main__":
    from jaxuft import host_memory

    host_memory.tune()  # jaxuft side runs with the allocator the CLI uses (jaxuft/host_memory.py)
    sys.exit(main())
