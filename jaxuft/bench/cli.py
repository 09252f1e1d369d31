"""``jaxuft bench``: the command-line front of :func:`jaxuft.bench.run_suite`."""

from __future__ import annotations

import argparse


def _cmd_bench(args) -> int:
    from pydantic import ValidationError

    from ..cli import CLIError, check_output_file
    from .suite import BenchConfig, default_out, run_suite

    out = args.out or str(default_out())
    check_output_file(out, "--out")
    fields = dict(models=args.models, items=args.items, replicas=args.replicas, sizes=args.sizes, steps=args.steps,
                  dtype=args.dtype, frame=args.frame, out=out, quick=args.quick, tiny=args.tiny, budget_s=args.budget_s,
                  replica_batch=args.replica_batch)
    try:
        cfg = BenchConfig(**{k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        errs = "; ".join(f"--{'-'.join(str(p) for p in e['loc'][:1]).replace('_', '-')}: {e['msg']}" for e in exc.errors())
        raise CLIError(errs) from None
    report = run_suite(cfg)
    return 0 if report["complete"] and not any("error" in r for r in report["results"]) else 1


def register(sub) -> None:
    from .suite import ITEMS

    p = sub.add_parser(
        "bench", help="benchmark suite on the device JAX sees: MD atom-steps/s, energy+forces, fine-tuning, SOAP + Q",
        description="Runs a standard suite on whatever device JAX sees (set JAX_PLATFORMS=cpu to force the CPU) and "
                    "prints a row as each item finishes; a JSON report (device, versions, date, every row) is "
                    "rewritten after each item. Built-in models: sevennet-0 (model zoo) and mace-mp0b-small "
                    "(MACE-MP-0b small architecture, random weights); mace-tiny for smoke tests. Exit status 1 "
                    "if any item failed.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="short check: mace-mp0b-small only, R = 1 64 1024 on an accelerator (1 4 on CPU), 5 steps")
    p.add_argument("--tiny", action="store_true", help="toy MACE on an 8-atom cell (tests, smoke checks)")
    p.add_argument("--models", nargs="+", default=None, metavar="M",
                   help="model names or paths (default: sevennet-0 mace-mp0b-small; zoo names, converted model "
                        "directories and torch checkpoints work too)")
    p.add_argument("--items", nargs="+", default=None, choices=list(ITEMS), metavar="ITEM",
                   help=f"what to measure (default all: {' '.join(ITEMS)})")
    p.add_argument("--replicas", nargs="+", type=int, default=None, metavar="R",
                   help="replica counts of md-replicas (default: 1 4 16 on CPU, 1 4 16 64 256 1024 on an accelerator)")
    p.add_argument("--sizes", nargs="+", type=int, default=None, metavar="N",
                   help="tiling factors of md-sizes: the base system repeated N times (default: 1 2 4 8 on CPU)")
    p.add_argument("--steps", type=int, default=None, help="timed MD steps per point (default 10; --quick 5)")
    p.add_argument("--dtype", default=None, choices=["float32", "float64"], help="default float32")
    p.add_argument("--frame", default=None,
                   help="structure file of the base system (default: the paper's 197-atom frame from "
                        "$JAXUFT_PAPER_DATA or ../shared/paper-data; else rock-salt NaCl)")
    p.add_argument("--budget-s", type=float, default=None,
                   help="skip an MD point whose time, estimated from the first point, exceeds this (default 600 s)")
    p.add_argument("--replica-batch", type=int, default=None, metavar="N",
                   help="most replicas advanced together in one vmapped group (default: md.Simulation's; on an "
                        "accelerator at most what half its memory holds at 4 MB per atom); an out-of-memory point is "
                        "retried with a quarter of the group")
    p.add_argument("-o", "--out", default=None, help="JSON report (default jaxuft-bench-DATE.json)")
    p.set_defaults(func=_cmd_bench, compile_cache=False)  # its "compile s" must be compilations, not cache loads
