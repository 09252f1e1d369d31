"""Issue 13 part 4 at CPU scale: fine-tune SevenNet-0 (all parameters, replay on) on the paper's naive (N-50),
periodic (FT5) and non-periodic control (NP-50) sets with the same hyperparameters, and evaluate each and the
untouched model.

    python examples/reports/paper/finetune_compare.py [--data ../shared/paper-data] [--out /tmp/ft_compare]
        [--sets N-50 FT5 NP-50] [--epochs 2] [--train-stride 2] [--test-stride 2] [--multihead] [--record]

Training frames: every ``--train-stride``-th frame of each set (every set keeps all its rounds); test frames:
all of test/independent.xyz and every ``--test-stride``-th frame of long/N-50.xyz and long/FT5.xyz. Forgetting:
the replay hold-out's error change (pseudo-labels of the initial model). ``--record`` appends the table to
benchmarks/RESULTS.md. Settings are chosen for a 2-core CPU (about an hour); on a GPU use strides 1 and more epochs.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
SETS = {"N-50": "train/naive/N-50.xyz", "FT5": "train/periodic/FT5.xyz", "NP-50": "train/nonperiodic/NP-50.xyz"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "paper-data")
    ap.add_argument("--out", type=Path, default=Path("/tmp/ft_compare"))
    ap.add_argument("--model", default="sevennet-0")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--train-stride", type=int, default=2)
    ap.add_argument("--test-stride", type=int, default=2)
    ap.add_argument("--replay-count", type=int, default=12)
    ap.add_argument("--sets", nargs="+", default=["N-50", "FT5", "NP-50"], choices=list(SETS))
    ap.add_argument("--multihead", action="store_true", help="multihead fine-tuning (ft head on the set, foundation "
                                                             "head on the replay frames)")
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args(argv)

    import jaxuft
    from ase.io import read
    from jaxuft.finetune import FinetuneConfig, evaluate, finetune

    d = args.data / "chclca"
    t_start = time.perf_counter()
    train = {k: read(d / SETS[k], ":")[:: args.train_stride] for k in args.sets}
    tests = {"independent": read(d / "test/independent.xyz", ":"),
             "long N-50": read(d / "long/N-50.xyz", ":")[:: args.test_stride],
             "long FT5": read(d / "long/FT5.xyz", ":")[:: args.test_stride]}
    foundation = jaxuft.load(args.model, dtype="float32")
    cfg = FinetuneConfig(epochs=args.epochs, batch_size=args.batch_size, freeze="none", e0s="lstsq",
                         replay_count=args.replay_count, progress=False, optim=dict(lr=args.lr),
                         **({"multihead": True} if args.multihead else {}))
    models, runs = {"foundation": foundation}, {}
    for name, frames in train.items():
        t0 = time.perf_counter()
        res = finetune(foundation, frames, replay="generate", config=cfg, out_dir=args.out / f"ft-{name}",
                       resume=(args.out / f"ft-{name}").exists(), log=lambda m: print(f"[{name}] {m}", flush=True))
        models[name] = res.potential
        runs[name] = {"status": res.status, "best_epoch": res.manifest.get("best_epoch"),
                      "forgetting": res.manifest.get("forgetting"), "seconds": time.perf_counter() - t0,
                      "n_train": len(frames), "replay_dropped": (res.manifest["data"]["replay"] or {}).get("dropped"),
                      "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
        print(f"{name}: {runs[name]}", flush=True)
    rows, metrics = [], {}
    for test, frames in tests.items():
        for mname, pot in models.items():
            rep = evaluate(pot, frames, batch_size=1, name=f"{mname} on {test}")
            o = rep.overall
            metrics[f"{mname} | {test}"] = rep.to_dict() | {"frames": None}
            pe = rep.per_element
            worst = max(pe, key=lambda s: pe[s].get("forces_rmse", 0.0)) if pe else "-"
            rows.append([mname if mname == "foundation" else f"fine-tuned on {mname}", test, len(frames),
                         round(o["energy_mean"], 2), round(o["energy_rmse"], 2), round(o["forces_rmse"], 1),
                         f"{worst} {pe[worst]['forces_rmse']:.0f}" if pe else "-"])
            print(rows[-1], flush=True)
    for name, r in runs.items():
        f = r["forgetting"] or {}
        e, fr = f.get("energy_rmse", {}), f.get("forces_rmse", {})
        rows.append([f"fine-tuned on {name}", "replay hold-out (forgetting)", "-", "-",
                     f"{e.get('change', float('nan')):+.2f}", f"{fr.get('change', float('nan')):+.1f}", "-"])
    header = ["model", "test set", "frames", "E mean (meV/atom)", "E RMSE (meV/atom)", "F RMSE (meV/Å)",
              "worst element F RMSE (meV/Å)"]
    total = time.perf_counter() - t_start
    (args.out / "table.json").write_text(json.dumps({"rows": rows, "runs": runs, "metrics": metrics,
                                                      "args": {k: str(v) for k, v in vars(args).items()},
                                                      "seconds": total}, indent=1, default=str))
    for r in rows:
        print(" | ".join(str(x) for x in r))
    if args.record:
        sys.path.insert(0, str(REPO))
        from benchmarks.results import append

        n_train = ", ".join(f"{k} {v['n_train']}" for k, v in runs.items())
        kind = "multihead (ft head + foundation head on replay)" if args.multihead else "single head"
        dropped = ", ".join(f"{k} {v['replay_dropped']}" for k, v in runs.items())
        rss = max(v["peak_rss_gb"] for v in runs.values())
        append(f"Paper fine-tune (chclca): {args.model}, all parameters + replay, {kind}, CPU scale", header, rows,
               notes=(f"examples/reports/paper/finetune_compare.py: freeze none (all parameters), {kind}, replay "
                      f"'generate' ({args.replay_count} pseudo-labelled crystals within the label limits, generated "
                      f"candidates dropped: {dropped}; 25 % held out for forgetting), E0s lstsq, "
                      f"epochs {args.epochs}, batch {args.batch_size}, lr {args.lr}, same settings for both sets; "
                      f"training frames: every {args.train_stride}th of N-50 and of FT5 "
                      f"({n_train}); test: all independent, every "
                      f"{args.test_stride}th frame of the 9 ns sets. Forgetting rows: change of the replay hold-out "
                      f"RMSE vs the initial model (E meV/atom, F meV/Å). Peak RSS {rss:.2f} GB. Total {total:.0f} s."))
    return 0


if __name__ == "__main__":
    sys.exit(main())
