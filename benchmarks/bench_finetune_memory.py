"""Peak RSS of a SevenNet-0 fine-tune on paper frames, with and without micro-batches (issue 15 item 5).

    python benchmarks/bench_finetune_memory.py [--train ../shared/paper-data/chclca/train/periodic/FT1.xyz]
        [--epochs 1] [--batch-size 10] [--variants after before] [--min-free-gb 14] [--record]

Each variant is one ``jaxuft finetune`` process under ``/usr/bin/time -v`` (peak RSS = its
"Maximum resident set size"): ``after`` = the defaults (``micro_batch_atoms`` 256: one 197-atom
frame per gradient pass), ``before`` = the whole batch in one pass (``--micro-batch-atoms`` 10^6,
the behaviour before micro-batches).  ``before`` needs ~11 GB at batch 10, so it is skipped
(and says so) when the machine has less than ``--min-free-gb`` available.  Both variants must
give the same validation errors (same update); the table shows them.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _available_gb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def run_variant(name: str, args, out: Path) -> dict:
    micro = {"after": None, "before": 10**6}[name]
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "jaxuft.cli", "finetune", "--model", args.model,
           "--train", str(args.train), "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "-q",
           "-o", str(out)]
    if micro is not None:
        cmd += ["--micro-batch-atoms", str(micro)]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr)
    if p.returncode != 0 or not m:
        raise RuntimeError(f"{name}: exit {p.returncode}\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}")
    man = json.loads((out / "manifest.json").read_text())
    valid = man["metrics"]["final_full_model"].get("valid", {})
    return {"variant": name, "peak_rss_gb": int(m.group(1)) / 2**20, "wall_s": wall,
            "micro_batch_frames": man["data"].get("micro_batch_frames"),
            "valid_E_rmse": valid.get("energy_rmse"), "valid_F_rmse": valid.get("forces_rmse")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="sevennet-0")
    ap.add_argument("--train", type=Path, default=REPO.parent / "shared/paper-data/chclca/train/periodic/FT1.xyz")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=10)
    ap.add_argument("--variants", nargs="+", default=["after", "before"], choices=["after", "before"])
    ap.add_argument("--min-free-gb", type=float, default=14.0)
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args(argv)
    load = Path("/proc/loadavg").read_text().split()[:3]
    rows, skipped = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for v in args.variants:
            if v == "before" and _available_gb() < args.min_free_gb:
                skipped.append(f"before (only {_available_gb():.1f} GB available, < {args.min_free_gb})")
                print("skipped:", skipped[-1], flush=True)
                continue
            r = run_variant(v, args, Path(tmp) / v)
            print(r, flush=True)
            rows.append([r["variant"], r["micro_batch_frames"], round(r["peak_rss_gb"], 2), round(r["wall_s"]),
                         round(r["valid_E_rmse"], 3), round(r["valid_F_rmse"], 2)])
    header = ["variant", "frames per gradient pass", "peak RSS GB", "wall s", "valid E RMSE meV/atom",
              "valid F RMSE meV/Å"]
    for r in rows:
        print(" | ".join(map(str, r)))
    if args.record:
        sys.path.insert(0, str(REPO))
        from benchmarks.results import append

        append("Fine-tuning peak memory: micro-batches (issue 15 item 5)", header, rows, notes=(
            f"benchmarks/bench_finetune_memory.py: `jaxuft finetune --model {args.model} --train {args.train.name} "
            f"--epochs {args.epochs} --batch-size {args.batch_size}` (other settings default), one process per "
            f"variant under /usr/bin/time -v. after: micro_batch_atoms 256 (default); before: the whole batch in one "
            f"gradient pass (--micro-batch-atoms 1000000, the code path before this change). "
            + (f"Skipped: {'; '.join(skipped)}; the issue measured 11.2 GB for this setting before the change. "
               if skipped else "")
            + f"Load average at start {' / '.join(load)} (shared 2-core machine)."))
    return 0


if __name__ == "__main__":
    sys.exit(main())
