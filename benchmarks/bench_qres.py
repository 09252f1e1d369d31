"""SOAP + Q-residual of the paper's 197-atom frame: jaxuft (JAX) vs dscribe + scikit-learn, one run.

Settings as in the paper: SOAP r_cut 5 Å, n_max 8, l_max 6, sigma 0.375 Å, periodic,
7 species (11 172 features); PCA with 5 components fitted on the first
``--train-frames`` frames of ``chclca/train/naive/N-50.xyz``.  The scored frame is
the first of ``chclca/test/independent.xyz``.  Times are medians of ``--repeats``
warm calls (jaxuft's first call, with compilation, is reported separately).

    python benchmarks/bench_qres.py [--data ../shared/paper-data] [--train-frames 5] [--repeats 5] [--no-append]

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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(ROOT / ".." / "shared" / "paper-data"))
    ap.add_argument("--train-frames", type=int, default=5)
    ap.add_argument("--batch-frames", type=int, default=10, help="frames for the batched SOAP throughput row")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-append", action="store_true", help="print only; do not append to RESULTS.md")
    args = ap.parse_args(argv)

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
    if args.no_append:
        print(notes)
        for r in rows:
            print(" | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in r))
    else:
        from benchmarks.results import append

        append("Q-residual: SOAP + Q of the 197-atom frame", header, rows, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
