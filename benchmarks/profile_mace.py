"""Where the time of one compiled MD step goes: per-part breakdown of a MACE (or any) model on CPU.

    python benchmarks/profile_mace.py MODEL [--steps 10] [--replicas 1] [--dtype float32] [--top 25]
    python benchmarks/profile_mace.py MODEL --edge-chunk 0 8 --append   # before/after, to RESULTS.md

MODEL is a converted jaxuft model (directory or zoo name) or a mace-torch ``.model``
(converted torch-free first).  The system is the 197-atom paper frame
(``../shared/paper-data/chclca/test/independent.xyz[0]``); ``--structure`` takes another file.

Method: the MD segment that :class:`jaxuft.md.Simulation` compiles (Langevin 300 K, 0.5 fs) is
run once to warm up, then ``--repeats`` times under ``jax.profiler`` (a Perfetto trace).  Every
executed XLA operation (a fusion, a dot, a scatter, ...) is an event of the trace; its HLO
metadata ``op_name`` carries the ``jax.named_scope`` of the model part it came from (the MACE
module labels its parts: ``edge_geometry``, ``radial_mlp``, ``messages``, ``linear``, ``skip_tp``,
``symmetric_contraction``, ``readout``), forward and backward alike (the backward of a part has
``transpose(...)`` around the same scope).  Times are summed per part and per direction.
The XLA cost analysis (flops, bytes accessed) of the whole compiled segment is printed too.
Op times are summed over the trace, so on a loaded machine they include time the threads were
preempted (their sum can exceed the wall time): compare shares, not absolute sums.
``--present-species off on`` profiles the MACE model compiled for all 89 species (off, the code before
2026-12-01 14:00) and for the species of the run (on, what :class:`jaxuft.md.Simulation` compiles) in one run.
``--edge-chunk 0 8`` profiles the MACE message sum per edge (0, the code before 2026-12-01) and per
receiver chunk of 8 in one run.  Prints tables; ``--markdown`` prints them as Markdown;
``--append`` appends the per-part table (shares per variant) to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
PAPER_FRAME = REPO.parent / "shared" / "paper-data" / "chclca" / "test" / "independent.xyz"

#: model parts, in the order they are reported (scope names used in jaxuft/models/mace.py)
PARTS = ("edge_layout", "edge_geometry", "radial_mlp", "messages", "linear", "skip_tp", "symmetric_contraction", "readout")


def _load(model: str, dtype: str):
    import jaxuft

    if model.endswith(".model") and os.path.isfile(model):
        from benchmarks.bench_mace import converted

        model = str(converted(Path(model)))
    return jaxuft.load(model, dtype=dtype)


def hlo_scopes(hlo_text: str) -> dict:
    """HLO instruction name -> its metadata ``op_name`` (for every instruction that has one)."""
    out = {}
    pat = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=.*?metadata=\{[^}]*op_name=\"([^\"]*)\"")
    for line in hlo_text.splitlines():
        m = pat.match(line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def classify(op_name: str) -> tuple[str, str]:
    """(part, direction) of an op from its metadata name."""
    part = "other (MD: integrator, neighbour list, graph)"
    for p in PARTS:
        if f"mace/{p}" in op_name or f"/{p}/" in op_name or op_name.endswith(f"/{p}"):
            part = p
            break
    direction = "backward" if "transpose(" in op_name else "forward"
    return part, direction


def trace_events(trace_dir: str) -> list:
    paths = sorted(glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True))
    if not paths:
        raise RuntimeError(f"no Perfetto trace under {trace_dir}")
    with gzip.open(paths[-1]) as f:
        return json.load(f)["traceEvents"]


def profile(pot, atoms, replicas: int, steps: int, repeats: int, present_species: bool = True) -> dict:
    import jax

    from jaxuft import md
    from jaxuft.md.segment import executable

    safety = md.Safety(max_temperature=1e9, min_distance=0.0)
    # present_species False: the model as compiled before 2026-12-01 14:00 (weights gathered from all species)
    sim = md.Simulation(pot, md.Langevin(0.5, 300.0, friction=0.01), chunk_steps=steps, safety=safety,
                        specialise_species=present_species)
    state = sim.init(atoms, replicas=replicas, seed=0)
    state, _ = sim.run(state, n_steps=steps, record_every=steps, progress=False)  # builds lists, sizes capacities
    params, extra, limits, cond = sim._params(None), jax.device_put({}), sim.limits(), sim.conditions()
    args = (params, sim.system, state, cond, limits, extra)
    exe, _ = executable(sim.program(1, steps, sim.spec), args)
    jax.block_until_ready(exe(*args))
    walls = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(exe(*args))
        walls.append(time.perf_counter() - t0)
    scopes = hlo_scopes(exe.as_text())
    cost = exe.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    with tempfile.TemporaryDirectory() as tmp:
        jax.profiler.start_trace(tmp, create_perfetto_trace=True)
        for _ in range(repeats):
            jax.block_until_ready(exe(*args))
        jax.profiler.stop_trace()
        events = trace_events(tmp)
    per = collections.defaultdict(float)
    per_op = collections.defaultdict(float)
    total = 0.0
    for e in events:
        if e.get("ph") != "X" or e["name"] not in scopes:
            continue
        dur = float(e.get("dur", 0.0)) / 1e3 / repeats / steps  # ms per MD step
        part, direction = classify(scopes[e["name"]])
        per[(part, direction)] += dur
        per_op[(e["name"], scopes[e["name"]])] += dur
        total += dur
    return {
        "ms_per_step": 1e3 * float(np.median(walls)) / steps,
        "op_ms_per_step": total,
        "parts": dict(per),
        "ops": dict(per_op),
        "flops_per_step": float(cost.get("flops", float("nan"))) / steps if cost else float("nan"),
        "bytes_per_step": float(cost.get("bytes accessed", float("nan"))) / steps if cost else float("nan"),
        "model_capacity": sim.spec.model_capacity,
        "capacity": sim.spec.capacity,
    }


def tables(res: dict, top: int, markdown: bool) -> str:
    lines = []
    row = (lambda cells: "| " + " | ".join(map(str, cells)) + " |") if markdown else (
        lambda cells: "  ".join(f"{c!s:>12s}" if i else f"{c!s:<48s}" for i, c in enumerate(cells)))
    lines.append(row(["part", "forward ms", "backward ms", "total ms", "share"]))
    if markdown:
        lines.append("|---|---|---|---|---|")
    parts = collections.defaultdict(lambda: [0.0, 0.0])
    for (part, direction), ms in res["parts"].items():
        parts[part][direction == "backward"] += ms
    tot = res["op_ms_per_step"]
    for part, (fw, bw) in sorted(parts.items(), key=lambda kv: -sum(kv[1])):
        lines.append(row([part, f"{fw:.2f}", f"{bw:.2f}", f"{fw + bw:.2f}", f"{100 * (fw + bw) / tot:.1f} %"]))
    lines.append(row(["sum of op times", "", "", f"{tot:.2f}", ""]))
    lines.append(row(["wall time per step", "", "", f"{res['ms_per_step']:.2f}", ""]))
    lines.append("")
    lines.append(row(["op (HLO name: scope)", "ms/step", "share", "", ""]))
    if markdown:
        lines.append("|---|---|---|---|---|")
    for (name, scope), ms in sorted(res["ops"].items(), key=lambda kv: -kv[1])[:top]:
        short = re.sub(r"jit\([^)]*\)/", "", scope)
        short = short if len(short) < 110 else short[:50] + " ... " + short[-55:]
        lines.append(row([f"{name}: {short}", f"{ms:.2f}", f"{100 * ms / tot:.1f} %", "", ""]))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--structure", default=str(PAPER_FRAME))
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--replicas", type=int, default=1)
    ap.add_argument("--steps", type=int, default=5, help="MD steps per compiled segment")
    ap.add_argument("--repeats", type=int, default=3, help="profiled segment calls")
    ap.add_argument("--top", type=int, default=25, help="list the N most expensive ops")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--edge-chunk", type=int, nargs="+", default=None,
                    help="MACE: profile these message-sum chunk sizes in one run (0 = per-edge scatter)")
    ap.add_argument("--present-species", nargs="+", choices=["off", "on"], default=None,
                    help="MACE: profile the model compiled for all species (off) and for the run's species "
                         "(on, what MD does) in one run")
    ap.add_argument("--append", action="store_true", help="append the per-part table to benchmarks/RESULTS.md")
    args = ap.parse_args(argv)
    if not os.path.isfile(args.structure):
        print(f"structure file {args.structure} not found (the paper data: ../shared/paper-data)", file=sys.stderr)
        return 2
    from ase.io import read

    import jax

    atoms = read(args.structure, index=0)
    pot = _load(args.model, args.dtype)
    variants = [("model default", pot)]
    if args.edge_chunk:
        import copy

        variants = []
        for chunk in args.edge_chunk:
            var = copy.copy(pot)
            var.module = pot.module.clone(edge_chunk=chunk)
            variants.append((f"edge_chunk={chunk}", var))
    variants = [(name, var, True) for name, var in variants]
    if args.present_species:
        variants = [(f"{name}, present species {ps}" if len(variants) > 1 else f"present species {ps}", var, ps == "on")
                    for name, var, _ in variants for ps in args.present_species]
    results = []
    for name, var, present in variants:
        res = profile(var, atoms, args.replicas, args.steps, args.repeats, present)
        load = os.getloadavg()
        res["load"] = load
        results.append((name, res))
        print(f"{args.model} [{name}]: {len(atoms)} atoms, R={args.replicas}, {args.dtype}, model edges capacity "
              f"{res['model_capacity']}, {jax.default_backend()}; XLA cost analysis of the segment (loop bodies "
              f"counted once): {res['flops_per_step'] * args.steps / 1e9:.2f} GFLOP, "
              f"{res['bytes_per_step'] * args.steps / 1e9:.2f} GB accessed; load average {load[0]:.1f} / {load[1]:.1f}")
        print(tables(res, args.top, args.markdown), flush=True)
    if args.append:
        from benchmarks.results import append

        parts = sorted({p for _, r in results for (p, _) in r["parts"]}, key=lambda p: (p not in PARTS, p))
        header = ["part"] + [f"{name}: fwd / bwd / share" for name, _ in results]
        rows = []
        for part in parts:
            row = [part]
            for _, r in results:
                fw, bw = r["parts"].get((part, "forward"), 0.0), r["parts"].get((part, "backward"), 0.0)
                row.append(f"{fw:.1f} / {bw:.1f} ms / {100 * (fw + bw) / r['op_ms_per_step']:.1f} %")
            rows.append(row)
        rows.append(["sum of op times (ms/step)"] + [f"{r['op_ms_per_step']:.0f}" for _, r in results])
        rows.append(["wall time (ms/step)"] + [f"{r['ms_per_step']:.0f}" for _, r in results])
        note = (f"benchmarks/profile_mace.py: the compiled MD segment (Langevin 300 K, 0.5 fs, {args.steps} steps, "
                f"R={args.replicas}, {args.dtype}) of {Path(args.model).name} on {Path(args.structure).name}[0] "
                f"({len(atoms)} atoms), {args.repeats} calls under jax.profiler; op times summed per model part "
                f"(jax.named_scope in jaxuft/models/mace.py), forward and backward (forces/stress) apart. "
                f"Load average during the runs: " + ", ".join(f"{r['load'][0]:.1f}" for _, r in results)
                + " on 2 cores: op times include preemption, compare shares.")
        append("MACE MD step profile (profile_mace.py)", header, rows, note)
    return 0


if __name__ == "__main__":
    from jaxuft import host_memory

    host_memory.tune()
    sys.exit(main())
