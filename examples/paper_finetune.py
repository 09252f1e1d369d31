"""Fine-tune a foundation model on the paper's naive and periodic training sets and compare.

Wong & Yang (arXiv 2603.10159) fine-tune a foundation model on 50 DFT frames of a deep
eutectic solvent (chclca, 197 atoms) chosen two ways: "naive" (N-50: random frames of
foundation-model MD) and "periodic" (FT5: frames from MD of the successively fine-tuned
models).  This script fine-tunes the same foundation model on both sets with the same
hyperparameters and evaluates the untouched foundation model and both fine-tuned models on

  chclca/test/independent.xyz   22 independent structures
  chclca/long/N-50.xyz          DFT along a 9 ns run of the paper's N-50 model
  chclca/long/FT5.xyz           DFT along a 9 ns run of the paper's FT5 model

and prints one table: energy residual mean and RMSE (meV/atom), force RMSE (meV/Å).

    python examples/paper_finetune.py                        # SevenNet-0, variant by device
    python examples/paper_finetune.py --variant full --epochs 100 --model mace_mp0b_small_dir
    python examples/paper_finetune.py --record               # append the table to benchmarks/RESULTS.md

Variants
--------
``frozen`` (default on CPU): the trunk is frozen and only the per-element energy scale and
shift of the model train (``--freeze 'train:^(scale|shift)$'``).  The energy is affine in
them, so the values and exact Jacobians of energies, forces and stresses are computed once
per frame (``trunk_cache``); after that an epoch costs milliseconds.  On a 2-core CPU the
cache costs about 40 s per 197-atom frame for SevenNet-0 (one backward pass per element
present), i.e. roughly the price of three full-model training epochs.  Models whose scale
is not per element (MACE: one scale per head) can use ``--freeze linear-readouts``
(the last linear layer of each readout; one backward pass per readout weight).
``full`` (default on a GPU): every non-buffer parameter trains with the full model.

E0s
---
``chclca/e0s.json`` holds VASP isolated-atom energies.  They are the right E0s for a model
whose per-element offsets are isolated-atom energies (a mace-torch head trained with
``--E0s`` from isolated atoms, as in the paper's multihead fine-tuning of MACE-MP-0b).
SevenNet-0's per-element offsets (``shift``) are instead regression references of MPtrj
total energies (H -3.67, C -8.41, O -7.28 eV...): replacing them by the isolated-atom
energies would move every 197-atom frame by about +886 eV, which a fine-tune cannot absorb.
So by default (``--e0s auto``) the offsets are refitted by least squares relative to the
model (``lstsq``: for frames of one composition this removes the mean energy residual)
whenever the model's offsets differ from the file's by more than 0.5 eV/atom on average,
and the file's E0s are used otherwise; ``--e0s file|lstsq|model`` forces a choice.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

TRAIN_SETS = {"N-50": "train/naive/N-50.xyz", "FT5": "train/periodic/FT5.xyz"}
TEST_SETS = {"independent": "test/independent.xyz", "long N-50": "long/N-50.xyz", "long FT5": "long/FT5.xyz"}


def default_data() -> Path:
    env = os.environ.get("JAXUFT_PAPER_DATA")
    return Path(env) if env else (REPO / ".." / "shared" / "paper-data").resolve()


def on_gpu() -> bool:
    import jax

    return any(d.platform == "gpu" for d in jax.devices())


def choose_e0s(arg: str, pot, e0_file: Path, frames) -> tuple:
    """("file" path | "lstsq" | "model", reason)."""
    if arg in ("lstsq", "model"):
        return arg, "chosen on the command line"
    if arg == "file":
        return str(e0_file), "chosen on the command line"
    import numpy as np

    from jaxuft.finetune.e0s import model_e0s, read_e0s
    from jaxuft.finetune.params import flatten, param_groups

    # the trainer finds and checks the offset leaf numerically; a name-based guess suffices here
    leaf = param_groups(pot.config, pot.params).e0
    if leaf is None:
        n = len(pot.atomic_numbers)
        paths, leaves, _ = flatten(pot.params)
        leaf = next((p for p, x in zip(paths, leaves) if p.split("/")[-1] in ("shift", "atomic_energies", "e0")
                     and np.shape(x) and np.shape(x)[-1] == n), None)
    if leaf is None:
        return "model", "the model has no per-element offset leaf"
    file_e0 = read_e0s(e0_file)
    mine = model_e0s(pot, pot.params, leaf)
    numbers = frames[0].atoms.get_atomic_numbers()
    diff = float(np.mean([file_e0[z] - mine[z] for z in numbers]))
    if abs(diff) > 0.5:
        return "lstsq", (f"the model's offsets ({leaf}) differ from e0s.json by {diff:+.2f} eV/atom on average: "
                         "they are not isolated-atom energies, so they are refitted relative to the model")
    return str(e0_file), f"the model's offsets ({leaf}) are close to e0s.json ({diff:+.2f} eV/atom)"


def epoch_log(epochs: int, name: str, lines: int = 10):
    """Print about ``lines`` epoch summaries per run (and every other message), not one per epoch."""
    every = max(1, epochs // lines)

    def log(msg: str) -> None:
        if msg.startswith("epoch "):
            try:
                k = int(msg.split()[1].rstrip(":"))
            except ValueError:
                k = 0
            if k % every and k != epochs:
                return
        print(f"[{name}] {msg}", flush=True)

    return log


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="sevennet-0", help="anything jaxuft.load accepts (default sevennet-0)")
    ap.add_argument("--data", type=Path, default=default_data(), help="paper-data folder (default ../shared/paper-data)")
    ap.add_argument("--out", type=Path, default=REPO / ".cache" / "paper_finetune", help="run directory")
    ap.add_argument("--variant", choices=["auto", "frozen", "full"], default="auto")
    ap.add_argument("--freeze", default=None, help="override the variant's freeze spec")
    ap.add_argument("--epochs", type=int, default=None, help="default 300 (frozen) / 100 (full)")
    ap.add_argument("--batch-size", type=int, default=5)
    ap.add_argument("--lr", type=float, default=None, help="default 0.01 (frozen) / 1e-3 (full)")
    ap.add_argument("--e0s", choices=["auto", "file", "lstsq", "model"], default="auto")
    ap.add_argument("--replay", action="store_true", help="mix in generated replay structures (pseudo-labelled)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--seed", type=int, default=123)
    ap.add_argument("--max-frames", type=int, default=None, help="use only the first N frames of every set (smoke runs)")
    ap.add_argument("--eval-batch-size", type=int, default=2)
    ap.add_argument("--fresh", action="store_true", help="retrain even when a finished run exists in --out")
    ap.add_argument("--record", action="store_true", help="append the table to benchmarks/RESULTS.md")
    ap.add_argument("-q", "--quiet", action="store_true")
    args = ap.parse_args(argv)

    chclca = args.data / "chclca"
    needed = [chclca / p for p in list(TRAIN_SETS.values()) + list(TEST_SETS.values())] + [chclca / "e0s.json"]
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        print(f"paper data not found ({missing[0]} ...); pass --data or set JAXUFT_PAPER_DATA", file=sys.stderr)
        return 2

    import jaxuft
    from jaxuft.finetune import FinetuneConfig, evaluate, finetune, read_frames
    from jaxuft.finetune.checkpoint import write_json_atomic

    t_start = time.perf_counter()
    foundation = jaxuft.load(args.model, dtype=args.dtype)
    variant = args.variant if args.variant != "auto" else ("full" if on_gpu() else "frozen")
    frozen = variant == "frozen"
    freeze = args.freeze or ("train:^(scale|shift)$" if frozen else "none")
    epochs = args.epochs or (300 if frozen else 100)
    lr = args.lr or (0.01 if frozen else 1e-3)

    def frames_of(rel):
        fr = read_frames(chclca / rel)
        return fr[: args.max_frames] if args.max_frames else fr

    train_sets = {name: frames_of(rel) for name, rel in TRAIN_SETS.items()}
    e0s, e0_reason = choose_e0s(args.e0s, foundation, chclca / "e0s.json", train_sets["N-50"])
    cfg = FinetuneConfig(
        epochs=epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        dtype=args.dtype,
        freeze=freeze,
        trunk_cache=frozen,
        cache_chunk=8,
        e0s=e0s,
        progress=not args.quiet,
        optim=dict(lr=lr),
    )
    print(f"model {args.model} ({foundation}); variant {variant}: freeze={freeze!r}, trunk_cache={frozen}, "
          f"epochs {epochs}, lr {lr}; E0s {e0s!r} ({e0_reason})", flush=True)

    models = {"foundation": foundation}
    runs = {}
    for name, frames in train_sets.items():
        out = args.out / f"ft-{name}"
        done = out / "manifest.json"
        if done.exists() and not args.fresh and json.loads(done.read_text()).get("status") in ("finished", "early_stopped"):
            print(f"{name}: reusing the finished run in {out}")
            models[name] = jaxuft.load(out / "model", dtype=args.dtype)
            runs[name] = json.loads(done.read_text())
            continue
        if args.fresh and out.exists():
            import shutil

            shutil.rmtree(out)
        t0 = time.perf_counter()
        res = finetune(foundation, frames, replay="generate" if args.replay else None, config=cfg, out_dir=out,
                       resume=True, log=(lambda m: None) if args.quiet else epoch_log(epochs, name))
        print(f"{name}: fine-tuned in {time.perf_counter() - t0:.0f} s ({res.status}, best epoch "
              f"{res.manifest['best_epoch']}, {res.manifest['model']['n_trainable']} trainable)", flush=True)
        models[name] = res.potential
        runs[name] = res.manifest

    rows = []
    table = {}
    for test, rel in TEST_SETS.items():
        frames = frames_of(rel)
        for mname, pot in models.items():
            t0 = time.perf_counter()
            rep = evaluate(pot, frames, batch_size=args.eval_batch_size, name=f"{mname} on {test}")
            o = rep.overall
            table[f"{mname} | {test}"] = o
            rows.append([mname if mname == "foundation" else f"fine-tuned on {mname}", test, len(frames),
                         round(o["energy_mean"], 2), round(o["energy_rmse"], 2), round(o["forces_rmse"], 1)])
            if not args.quiet:
                print(f"  evaluated {mname} on {test} in {time.perf_counter() - t0:.0f} s", flush=True)

    header = ["model", "test set", "frames", "E mean (meV/atom)", "E RMSE (meV/atom)", "F RMSE (meV/Å)"]
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    line = lambda r: "  ".join(str(v).rjust(w) if i >= 2 else str(v).ljust(w) for i, (v, w) in enumerate(zip(r, widths)))
    print()
    print(line(header))
    for r in rows:
        print(line(r))
    total = time.perf_counter() - t_start
    write_json_atomic(args.out / "table.json", {
        "model": str(args.model), "variant": variant, "freeze": freeze, "epochs": epochs, "lr": lr,
        "e0s": e0s, "e0s_reason": e0_reason, "max_frames": args.max_frames, "rows": rows, "metrics": table,
        "runs": {k: {"best_epoch": v.get("best_epoch"), "timings": v.get("timings"), "status": v.get("status")}
                 for k, v in runs.items()},
        "seconds": total,
    })
    if args.record:
        sys.path.insert(0, str(REPO))
        from benchmarks.results import append

        t_cache = {k: round(v.get("timings", {}).get("cache_s", 0.0)) for k, v in runs.items()}
        append(
            f"Paper fine-tune (chclca): {args.model}, {variant} variant",
            header,
            rows,
            notes=(f"examples/paper_finetune.py: freeze={freeze!r}, trunk_cache={frozen}, epochs {epochs}, "
                   f"batch {args.batch_size}, lr {lr}, AMSGrad/plateau, warm-up {cfg.optim.warmup_epochs} epoch(s), EMA "
                   f"{cfg.optim.ema_decay}, loss weights E 1 / F 100 / S 1, starting model a candidate, "
                   f"valid = 10 % of each training set (seed {args.seed}), best-validation params kept; E0s {e0s!r} "
                   f"({e0_reason}); {'all frames' if not args.max_frames else f'first {args.max_frames} frames of each set'}. "
                   f"Cache time per training set (s): {t_cache}; total {total:.0f} s."),
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
