"""SOAP + Q-residual of the paper's 197-atom frame: jaxuft (JAX) vs dscribe + scikit-learn, one run.

Settings as in the paper: SOAP r_cut 5 Å, n_max 8, l_max 6, sigma 0.375 Å, periodic,
7 species (11 172 features); PCA with 5 components fitted on the first
``--train-frames`` frames of ``chclca/train/naive/N-50.xyz``.  The scored frame is
the first of ``chclca/test/independent.xyz``.  Times are medians of ``--repeats``
warm calls (jaxuft's first call, with compilation, is reported separately).

    python benchmarks/bench_qres.py [--data ../shared/paper-data] [--train-frames 5] [--repeats 5] [--no-append]
    python benchmarks/bench_qres.py --monitor [--model sevennet-0] [--steps 20] [--rounds 2] [--only model] [--no-append]

    python benchmarks/bench_qres.py --memory [--example-args "--no-model"] [--no-append]

``--memory``: peak RSS (``/usr/bin/time -v``) and wall time of ``jaxuft qres fit`` on FT5
(50 frames, the paper's SOAP, 5 components) and of ``examples/paper_qresidual.py``, each in
its own process, one after the other, with the commit they ran at.

``--monitor``: the cost of the live Q monitor inside MD (``jaxuft.uq.build_monitor``) on the
paper frame, as a fraction of an MD step: with the model's own descriptors (taken from the
step's force evaluation, and, for the A/B, computed by a second forward pass as before) and
with SOAP.  Measured two ways in one run: the monitor program alone against the step's
energy+forces program on the same graph, and MD segments with and without the monitor
(recording, hence evaluating it, every step and every 10th step), timed in interleaved rounds.  The model's graph must hold SOAP's whole
neighbourhood (``r_cut`` + padding), so SOAP here uses the largest ``r_cut`` the model's
cutoff allows (n_max 8, l_max 6, sigma 0.375, the 7 species).

Appends a table to benchmarks/RESULTS.md (device: whatever JAX runs on; set
``JAX_PLATFORMS=cpu`` to force the CPU).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def median_time(fn, repeats):
    times = []
    out = None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times)), out


def _peak_rss_gb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def _min_time(fn, repeats):
    import jax

    jax.block_until_ready(fn())
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        ts.append(time.perf_counter() - t)
    return float(np.min(ts))


def monitor_cost(args) -> int:
    """Issue 15 item 3: the live Q monitor's cost as a fraction of an MD step (see the module docstring)."""
    import os

    import ase.io
    import jax

    import jaxuft
    from jaxuft import md
    from jaxuft.uq import PCA, SOAP, build_monitor
    from jaxuft.uq.soap import _THRESHOLD, graph_descriptor_fn

    data = Path(args.data) / "chclca"
    frame = ase.io.read(data / "test/independent.xyz", 0)
    train = ase.io.read(data / "train/naive/N-50.xyz", f":{args.train_frames}")
    pot = jaxuft.load(args.model, dtype=args.dtype)
    species = sorted(set(frame.get_chemical_symbols()))
    sigma = 0.375
    r_cut = float(np.floor((pot.cutoff - sigma * np.sqrt(-2.0 * np.log(_THRESHOLD))) * 10) / 10)
    soap = SOAP(species, r_cut, 8, 6, sigma, periodic=True, dtype=args.dtype)
    model_mon = build_monitor(pot, PCA(5, dtype=args.dtype).fit(pot.descriptors(train)), None)
    # name: (monitor, observables_descriptors): the model monitor with its own forward pass (the path before
    # the engine handed it the force pass's descriptors) and with the force pass's descriptors (the default)
    monitors = {
        "model descriptors, own forward pass": (model_mon, False),
        "model descriptors, from the force pass": (model_mon, None),
        f"SOAP (r_cut {r_cut:g})": (build_monitor(
            pot, PCA(5, dtype=args.dtype).fit(soap.compute(train)), None,
            descriptor_fn=graph_descriptor_fn(soap, pot.atomic_numbers, pot.cutoff)), None),
    }
    if args.only:
        monitors = {k: v for k, v in monitors.items() if args.only in k}
    graph = pot.graph(frame)
    efs = pot.compiled("efs")
    t_efs = _min_time(lambda: efs(pot.params, graph), args.repeats)
    desc = jax.jit(pot.node_descriptors)(pot.params, graph)

    safety = md.Safety(max_temperature=1e9, min_distance=0.0)
    steps = args.steps

    def md_run(observables=None, extra=None, record_every=1, reuse=None):
        """A compiled MD run of ``steps`` steps (compiled and run once here); returns the timed call."""
        sim = md.Simulation(pot, md.Langevin(0.5, 300.0, friction=0.01), chunk_steps=steps, safety=safety,
                            observables=observables, observables_descriptors=reuse)
        start = sim.init(frame, replicas=1, seed=0)
        sim.run(start, n_steps=steps, record_every=record_every, extra=extra, progress=False)  # compile
        return lambda: sim.run(start, n_steps=steps, record_every=record_every, extra=extra, progress=False)

    runs = {("none", k): md_run(record_every=k) for k in (1, 10)}
    for name, (mon, reuse) in monitors.items():
        for k in (1, 10):
            runs[(name, k)] = md_run(mon.fn, mon.extra_args, k, reuse)
    # interleaved: every round times each configuration once, starting one later each round (the load drifts
    # between rounds more than within one); the energy+forces call is timed in every round too
    runs[("efs", 0)] = lambda: jax.block_until_ready(efs(pot.params, graph))
    best = {key: np.inf for key in runs}
    keys = list(runs)
    for i in range(args.rounds):
        for key in keys[i % len(keys):] + keys[: i % len(keys)]:
            t = time.perf_counter()
            runs[key]()
            best[key] = min(best[key], time.perf_counter() - t)
    t_efs = min(t_efs, best.pop(("efs", 0)))
    ms = {key: 1e3 * v / steps for key, v in best.items()}
    rows = [["MD step, no monitor (record every 1 / 10)", f"{ms[('none', 1)]:.1f} / {ms[('none', 10)]:.1f}", "", "",
             ""],
            ["energy+forces alone (same graph)", f"{1e3 * t_efs:.1f}", "", "", ""]]
    for name, (mon, reuse) in monitors.items():
        fn = jax.jit(mon.fn)
        if reuse is None and mon.fn.model_descriptors is not None:  # what the engine runs: Q from given descriptors
            t_mon = _min_time(lambda: fn(pot.params, graph, mon.extra_args, descriptors=desc), args.repeats)
        else:
            t_mon = _min_time(lambda: fn(pot.params, graph, mon.extra_args), args.repeats)
        rows.append([f"monitor, {name}", f"{1e3 * t_mon:.1f}", f"{100 * t_mon / t_efs:.1f}",
                     f"{100 * (ms[(name, 1)] / ms[('none', 1)] - 1):.1f}",
                     f"{100 * (ms[(name, 10)] / ms[('none', 10)] - 1):.1f}"])
    load = os.getloadavg()
    ab = ""
    own, mine = "model descriptors, own forward pass", "model descriptors, from the force pass"
    if own in monitors and mine in monitors:
        ab = (f" A/B of the model monitor, same run: the force-pass descriptors take "
              f"{100 * (ms[(own, 1)] - ms[(mine, 1)]) / ms[('none', 1)]:.1f} % of a step off the MD step with the "
              f"monitor every step ({ms[(own, 1)]:.1f} -> {ms[(mine, 1)]:.1f} ms/step) and "
              f"{100 * (ms[(own, 10)] - ms[(mine, 10)]) / ms[('none', 10)]:.1f} % every 10th step "
              f"({ms[(own, 10)]:.1f} -> {ms[(mine, 10)]:.1f} ms/step).")
    notes = (
        f"{args.model} ({args.dtype}, cutoff {pot.cutoff:g} Å) on the paper frame chclca/test/independent.xyz[0] "
        f"(197 atoms), 1 replica, Langevin 0.5 fs; PCA 5 components on {args.train_frames} N-50 frames. "
        f"Columns: ms per call of the monitor program alone (min of {args.repeats}; with descriptors from the force "
        f"pass: Q from given descriptors, what the engine runs then); that as % of an energy+forces "
        f"call on the same graph; the increase of the MD step time (min over {args.rounds} interleaved rounds of "
        f"{steps} steps, each configuration timed once per round, after a compiling run) with the monitor "
        f"evaluated every step, and every 10th step. 'own forward pass': the monitor runs the model again at every "
        f"recorded frame (Simulation(observables_descriptors=False), the only path before); 'from the force pass': "
        f"the engine hands it the descriptors of the step's force evaluation. SOAP: r_cut {r_cut:g} Å "
        f"(+ {soap.cutoff_padding:.2f} Å padding <= the model's cutoff), n_max 8, l_max 6, sigma {sigma}, 7 species "
        f"({soap.n_features} features). Load average at the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} on "
        f"{os.cpu_count()} cores; peak RSS of the run {_peak_rss_gb():.2f} GB." + ab
    )
    header = ["what", "ms", "% of energy+forces", "% more per MD step (monitor every step)",
              "% more per MD step (every 10th step)"]
    from benchmarks.results import record

    record("Live Q monitor cost inside MD (issue 15 item 3)", header, rows, notes, dry_run=args.no_append)
    return 0


def _time_v(cmd: list[str], log: Path) -> dict:
    """Run ``cmd`` under ``/usr/bin/time -v``: peak RSS (GB), wall (s), exit status; output to ``log``."""
    import subprocess

    with open(log, "w") as f:
        proc = subprocess.run(["/usr/bin/time", "-v", *cmd], stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
    text = log.read_text(errors="replace")
    rss = wall = None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("Maximum resident set size (kbytes):"):
            rss = int(line.split(":")[-1]) / 1024**2
        elif line.startswith("Elapsed (wall clock) time"):
            parts = [float(x) for x in line.rsplit(" ", 1)[-1].split(":")]
            wall = sum(v * 60**k for k, v in enumerate(reversed(parts)))
    return {"rss_gb": rss, "wall_s": wall, "rc": proc.returncode}


def memory(args) -> int:
    """Issue 15 item 5: peak RSS of ``jaxuft qres fit`` on FT5 and of the paper Q-residual example."""
    import os
    import shlex
    import subprocess
    import tempfile

    data = Path(args.data) / "chclca"
    rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "jaxuft", "examples"],
                           capture_output=True, text=True).stdout.strip()
    tmp = Path(tempfile.mkdtemp(prefix="bench_qres_mem_"))
    bin_dir = Path(sys.executable).parent
    extra = shlex.split(args.example_args or "")
    runs = [
        ("`jaxuft qres fit` FT5 (50 frames)",
         [str(bin_dir / "jaxuft"), "qres", "fit", str(data / "train/periodic/FT5.xyz"), "-o", str(tmp / "pca.npz"),
          "--quiet"]),
        ("`examples/paper_qresidual.py`" + (f" {' '.join(extra)}" if extra else ""),
         [sys.executable, str(ROOT / "examples/paper_qresidual.py"), "--data", str(args.data), "--out",
          str(tmp / "example"), *extra]),
    ]
    if args.only:
        runs = [r for r in runs if args.only in r[0]]
    rows = []
    for name, cmd in runs:
        res = _time_v(cmd, tmp / f"log_{len(rows)}.txt")
        print(name, res, flush=True)
        rows.append([name, f"{res['rss_gb']:.2f}" if res["rss_gb"] else "?",
                     f"{res['wall_s']:.0f}" if res["wall_s"] else "?", res["rc"]])
    load = os.getloadavg()[0]
    notes = (f"Each command in its own process, one after the other, at commit {rev}"
             + (" (with uncommitted changes in jaxuft/ or examples/)" if dirty else "")
             + f"; peak RSS = /usr/bin/time -v's maximum resident set size. SOAP r_cut 5 / n_max 8 / l_max 6 / "
             f"sigma 0.375, 7 species (11172 features), float64, 5 components. 1-min load average at the end "
             f"{load:.1f} on {os.cpu_count()} cores (shared machine). Logs: {tmp}.")
    header = ["command", "peak RSS (GB)", "wall (s)", "exit status"]
    from benchmarks.results import record

    record("Q-residual peak memory (issue 15 item 5)", header, rows, notes, dry_run=args.no_append)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(ROOT / ".." / "shared" / "paper-data"))
    ap.add_argument("--train-frames", type=int, default=5)
    ap.add_argument("--batch-frames", type=int, default=10, help="frames for the batched SOAP throughput row")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-append", action="store_true", help="print only; do not append to RESULTS.md")
    ap.add_argument("--monitor", action="store_true", help="measure the live Q monitor's cost inside MD instead")
    ap.add_argument("--model", default="sevennet-0", help="--monitor: the MD model (name or path)")
    ap.add_argument("--dtype", default="float32", choices=("float32", "float64"), help="--monitor: MD dtype")
    ap.add_argument("--steps", type=int, default=20, help="--monitor: steps per timed MD segment")
    ap.add_argument("--rounds", type=int, default=2, help="--monitor: interleaved timing rounds (min taken)")
    ap.add_argument("--memory", action="store_true", help="peak RSS of `jaxuft qres fit` on FT5 and of the example")
    ap.add_argument("--example-args", default="", help="--memory: extra arguments for examples/paper_qresidual.py")
    ap.add_argument("--only", default=None, help="--memory: run only the command whose name contains this; "
                    "--monitor: only the monitors whose name contains this")
    args = ap.parse_args(argv)
    if args.monitor:
        return monitor_cost(args)
    if args.memory:
        return memory(args)

    data = Path(args.data) / "chclca"
    if not data.exists():
        print(f"paper data not found at {data}; pass --data", file=sys.stderr)
        return 2
    import ase.io
    import jax
    from dscribe.descriptors import SOAP as DSOAP
    from sklearn.decomposition import PCA as SKPCA

    from jaxuft.uq import PCA, SOAP

    frame = ase.io.read(data / "test/independent.xyz", 0)
    train = ase.io.read(data / "train/naive/N-50.xyz", f":{args.train_frames}")
    batch = ase.io.read(data / "train/periodic/FT5.xyz", f":{args.batch_frames}")
    species = sorted(set(frame.get_chemical_symbols()))
    settings = dict(r_cut=5.0, n_max=8, l_max=6, sigma=0.375, periodic=True)

    ds = DSOAP(species=species, **settings)
    js = SOAP(species, **settings)

    # --- PCA fits (once) --------------------------------------------------------------
    Xtr_ref = ds.create(train)
    Xtr_ref = Xtr_ref.reshape(-1, Xtr_ref.shape[-1])
    t = time.perf_counter()
    sk = SKPCA(5, svd_solver="full").fit(Xtr_ref)
    t_sk_fit = time.perf_counter() - t
    Xtr = js.compute(train)
    t = time.perf_counter()
    jp = PCA(5).fit(Xtr)
    t_j_fit = time.perf_counter() - t

    # --- first jaxuft call on the frame (compile) ------------------------------------
    js_cold = SOAP(species, **settings)
    t = time.perf_counter()
    x_cold = js_cold.compute(frame)
    jp.q_residual(x_cold)
    t_cold = time.perf_counter() - t

    # --- warm timings ----------------------------------------------------------------
    def ref_soap():
        return ds.create(frame)

    def ref_q(X):
        return np.sum((X - sk.inverse_transform(sk.transform(X))) ** 2, axis=1)

    t_ds, X_ref = median_time(ref_soap, args.repeats)
    t_skq, q_ref = median_time(lambda: ref_q(X_ref), args.repeats)
    t_ref_total, _ = median_time(lambda: ref_q(ref_soap()), args.repeats)

    t_js, X = median_time(lambda: js.compute(frame), args.repeats)
    t_jq, q = median_time(lambda: jp.q_residual(X), args.repeats)
    t_j_total, _ = median_time(lambda: jp.q_residual(js.compute(frame)), args.repeats)

    ds.create(batch)  # warm
    js.compute(batch)
    t_ds_batch, _ = median_time(lambda: ds.create(batch), max(1, args.repeats // 2))
    t_js_batch, _ = median_time(lambda: js.compute(batch), max(1, args.repeats // 2))

    scale = np.max(np.abs(X_ref))
    soap_err = float(np.max(np.abs(X - X_ref)) / scale)
    soap_elem = float(np.max(np.abs(X - X_ref) / np.maximum(np.abs(X_ref), 1e-10 * scale)))
    q_err = float(np.max(np.abs(q - q_ref) / np.abs(q_ref)))
    ev_err = float(np.max(np.abs(jp.explained_variance_ / sk.explained_variance_ - 1)))

    dev = jax.devices()[0]
    import os

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    n_train = len(Xtr)
    rows = [
        ["SOAP, 197 atoms (11172 features)", t_ds, t_js, t_ds / t_js],
        ["Q of 197 atoms (5 components)", t_skq, t_jq, t_skq / t_jq],
        ["SOAP + Q, one frame", t_ref_total, t_j_total, t_ref_total / t_j_total],
        [f"SOAP, {len(batch)} frames batched", t_ds_batch, t_js_batch, t_ds_batch / t_js_batch],
        [f"PCA fit, {n_train} x {Xtr.shape[1]} (sklearn full SVD vs jaxuft SVD)", t_sk_fit, t_j_fit, t_sk_fit / t_j_fit],
        ["jaxuft first call (SOAP + Q incl. compile)", "", t_cold, ""],
    ]
    notes = (
        f"Paper frame chclca/test/independent.xyz[0] (197 atoms, 7 species); SOAP r_cut 5, n_max 8, l_max 6, "
        f"sigma 0.375, periodic; PCA 5 components on {args.train_frames} frames of N-50. Times in s (median of "
        f"{args.repeats}); speedup = reference / jaxuft. jaxuft float64 on {dev.platform}:{getattr(dev, 'device_kind', '')}; "
        f"dscribe n_jobs=1; 1-min load average at the end {load:.1f} on {os.cpu_count()} cores.\nParity: SOAP max |diff| / max|ref| = {soap_err:.2e} (elementwise rel {soap_elem:.2e}); "
        f"Q max rel {q_err:.2e}; explained variance max rel {ev_err:.2e}."
    )
    header = ["step", "dscribe + scikit-learn (s)", "jaxuft (s)", "speedup"]
    from benchmarks.results import record

    record("Q-residual: SOAP + Q of the 197-atom frame", header, rows, notes, dry_run=args.no_append)
    return 0


if __name__ == "__main__":
    sys.exit(main())
