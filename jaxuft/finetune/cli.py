"""``jaxuft finetune`` and ``jaxuft evaluate`` (registered into ``jaxuft/cli.py``).

    jaxuft finetune --model M --train T.xyz [--valid V.xyz] [--replay R.xyz|generate]
                    [--epochs N] [--freeze SPEC] [--trunk-cache] [--e0s model|lstsq|average|E0S.json]
                    -o OUT_DIR [--resume]
    jaxuft evaluate --model M FRAMES.xyz [MORE.xyz ...] [--json OUT.json]

Every hyperparameter flag defaults to :class:`~jaxuft.finetune.FinetuneConfig`'s
value (mace-torch's defaults where it has one); ``--config FILE.json`` gives a
base config (the ``hyperparameters`` block of a run's manifest.json works), and
explicit flags override it.
"""

from __future__ import annotations

import argparse
import json
import sys

#: (flag, FinetuneConfig field (dotted for nested), type, help)
_FLAGS = [
    ("--epochs", "epochs", int, "number of epochs (default 100)"),
    ("--batch-size", "batch_size", int, "structures per batch (default 10, mace-torch)"),
    ("--seed", "seed", int, "seed of the split, shuffling and replay generation (default 123)"),
    ("--valid-fraction", "valid_fraction", float, "fraction of --train held out when --valid is not given (default 0.1)"),
    ("--dtype", "dtype", str, "float32 (default) or float64"),
    ("--freeze", "freeze", str, "what trains: none | readouts | layers:K | linear-readouts | linear | train:REGEX | freeze:REGEX"),
    ("--e0s", "e0s", str, "model (default) | lstsq | average | path to a JSON {element: eV}"),
    ("--lr", "optim.lr", float, "learning rate (default 0.01)"),
    ("--optimizer", "optim.optimizer", str, "adam (default) | amsgrad | adamw"),
    ("--weight-decay", "optim.weight_decay", float, "weight decay (default 5e-7)"),
    ("--scheduler", "optim.scheduler", str, "plateau (default) | constant | cosine | exponential"),
    ("--lr-factor", "optim.lr_factor", float, "plateau decay factor (default 0.8)"),
    ("--scheduler-patience", "optim.scheduler_patience", int, "plateau patience in epochs (default 50)"),
    ("--warmup-epochs", "optim.warmup_epochs", float, "linear learning-rate warm-up (default 0)"),
    ("--clip-grad", "optim.clip_grad", float, "global gradient-norm clip, <= 0 for none (default 10)"),
    ("--ema-decay", "optim.ema_decay", float, "EMA decay of the params, 0 for none (default none)"),
    ("--patience", "patience", int, "early stopping after this many epochs without a better validation loss"),
    ("--keep", "keep", str, "best (default; lowest validation loss) or last"),
    ("--loss", "loss.kind", str, "mse (default) or huber"),
    ("--huber-delta", "loss.huber_delta", float, "Huber delta (default 0.01)"),
    ("--energy-weight", "loss.energy_weight", float, "energy-per-atom weight (default 1)"),
    ("--forces-weight", "loss.forces_weight", float, "forces weight (default 100)"),
    ("--stress-weight", "loss.stress_weight", float, "stress weight (default 1)"),
    ("--replay-weight", "replay_weight", float, "config weight of replay frames (default 1)"),
    ("--replay-count", "replay_count", int, "generated replay structures (default 40)"),
    ("--replay-holdout", "replay_holdout", float, "fraction of replay frames held out to measure forgetting (default 0.25)"),
    ("--replay-labels", "replay_labels", str, "pseudo (default; label with the initial model) or file"),
    ("--cache-chunk", "cache_chunk", int, "Jacobian columns per pass of the frozen-trunk cache (default 16)"),
    ("--cache-batch-size", "cache_batch_size", int, "frames per Jacobian pass of the frozen-trunk cache (default 1)"),
    ("--energy-key", "energy_key", str, "info key of the energy label (default: calculator results / 'energy')"),
    ("--forces-key", "forces_key", str, "arrays key of the forces label"),
    ("--stress-key", "stress_key", str, "info key of the stress label"),
]


def _add_finetune(sub) -> None:
    p = sub.add_parser(
        "finetune",
        help="fine-tune a model on labelled frames (optax; resumable; replay against forgetting)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, help="model directory, torch checkpoint or model-zoo name")
    p.add_argument("--train", required=True, nargs="+", help="training frames (extxyz with energy/forces[/stress])")
    p.add_argument("--valid", nargs="+", default=None, help="validation frames (default: split off --train)")
    p.add_argument("--replay", default=None, help="replay structures file, or 'generate' (rattled bulk crystals)")
    p.add_argument("-o", "--output", required=True, help="output directory (checkpoint, metrics, model/, manifest)")
    p.add_argument("--config", default=None, help="JSON file with a FinetuneConfig (flags override it)")
    p.add_argument("--trunk-cache", action="store_true", default=None,
                   help="frozen trunk: compute values and Jacobians once (needs an energy affine in what trains)")
    p.add_argument("--no-amsgrad", action="store_true", help="plain Adam instead of AMSGrad")
    p.add_argument("--resume", action="store_true", help="continue the run in --output from its checkpoint")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    for flag, dest, typ, hlp in _FLAGS:
        p.add_argument(flag, dest=dest.replace(".", "__"), type=typ, default=None, help=hlp,
                       metavar=flag.lstrip("-").upper().replace("-", "_"))
    p.set_defaults(func=_cmd_finetune)


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="energy/force/stress errors of a model on labelled frames, overall and per element")
    p.add_argument("frames", nargs="+", help="labelled frames (extxyz)")
    p.add_argument("--model", required=True, help="model directory, torch checkpoint or model-zoo name")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--json", default=None, help="also write the reports to this JSON file")
    p.add_argument("--energy-key", default=None)
    p.add_argument("--forces-key", default=None)
    p.add_argument("--stress-key", default=None)
    p.set_defaults(func=_cmd_evaluate)


def register(subparsers) -> None:
    """Add ``finetune`` and ``evaluate`` to an argparse subparsers object."""
    _add_finetune(subparsers)
    _add_evaluate(subparsers)


def config_from_args(args):
    """A FinetuneConfig from ``--config`` and the explicit flags."""
    from .trainer import FinetuneConfig

    base = FinetuneConfig()
    if args.config:
        with open(args.config) as f:
            d = json.load(f)
        d = d.get("hyperparameters", d)
        base = FinetuneConfig.from_dict(d)
    changes = {}
    for _, dest, _, _ in _FLAGS:
        v = getattr(args, dest.replace(".", "__"))
        if v is None:
            continue
        if dest == "optim.clip_grad" and v <= 0:
            v = None
        if dest == "optim.ema_decay" and v <= 0:
            v = None
        if "." in dest:
            group, name = dest.split(".")
            changes[f"{group}_{name}"] = v
        else:
            changes[dest] = v
    if args.trunk_cache:
        changes["trunk_cache"] = True
    if args.no_amsgrad:
        changes["optim_amsgrad"] = False
    if args.quiet:
        changes["progress"] = False
    return base.replace(**changes)


def _cmd_finetune(args) -> int:
    from .trainer import finetune

    cfg = config_from_args(args)
    train = args.train if len(args.train) > 1 else args.train[0]
    valid = None if args.valid is None else (args.valid if len(args.valid) > 1 else args.valid[0])
    result = finetune(
        args.model, train, valid=valid, replay=args.replay, config=cfg, out_dir=args.output, resume=args.resume,
        log=None if cfg.progress else print,
    )
    m = result.manifest
    print(f"status: {result.status} after {m['epochs_run']} epoch(s); best epoch {m['best_epoch']} "
          f"({m['model']['n_trainable']} trainable parameters, freeze={cfg.freeze!r})")
    final = m["metrics"].get("final_full_model", {})
    for split, met in final.items():
        print(f"{split:15s} E RMSE {met['energy_rmse']:.2f} meV/atom  F RMSE {met['forces_rmse']:.1f} meV/Å  "
              f"S RMSE {met['stress_rmse']:.3f} meV/Å³")
    if m.get("forgetting"):
        f = m["forgetting"]
        print(f"forgetting (replay hold-out, change vs initial model): E RMSE {f['energy_rmse']['change']:+.2f} meV/atom, "
              f"F RMSE {f['forces_rmse']['change']:+.1f} meV/Å")
    if "model" in m["outputs"]:
        print(f"model: {m['outputs']['model']}")
    print(f"manifest: {args.output}/manifest.json  metrics: {args.output}/metrics.csv")
    return 0


def _cmd_evaluate(args) -> int:
    from ..api import load
    from .evaluation import evaluate, format_report

    pot = load(args.model, dtype=args.dtype)
    reports = []
    for path in args.frames:
        rep = evaluate(pot, path, batch_size=args.batch_size, energy_key=args.energy_key,
                       forces_key=args.forces_key, stress_key=args.stress_key, name=str(path))
        reports.append(rep)
        print(format_report(rep))
        print()
    if args.json:
        from .checkpoint import write_json_atomic

        write_json_atomic(args.json, [r.to_dict() for r in reports])
    return 0


def main(argv=None) -> int:
    """Standalone entry (``python -m jaxuft.finetune.cli``): the ``jaxuft`` command line."""
    from ..cli import main as jaxuft_main

    return jaxuft_main(argv)


if __name__ == "__main__":
    sys.exit(main())
