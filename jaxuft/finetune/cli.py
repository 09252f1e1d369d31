"""``jaxuft finetune`` and ``jaxuft evaluate`` (registered into ``jaxuft/cli.py``).

    jaxuft finetune --model M --train T.xyz [--valid V.xyz] [--replay R.xyz|generate]
                    [--epochs N] [--freeze SPEC] [--trunk-cache] [--e0s model|lstsq|auto|average|E0S.json]
                    [--preset safe|mace-torch] [--allow-worse] [--multihead] -o OUT_DIR [--resume]
    jaxuft evaluate --model M FRAMES.xyz [MORE.xyz ...] [--head ft|foundation] [--json OUT.json]

The hyperparameter flags are derived from :class:`~jaxuft.finetune.FinetuneConfig`'s
fields (nested ``loss``/``optim`` fields by their own names, ``loss.kind`` as ``--loss``)
and default to its values; ``--preset mace-torch`` gives the previous settings,
``--config FILE`` (YAML/TOML/JSON; the ``hyperparameters`` block of a run's
manifest.json works) a base config, and explicit flags override both.
"""

from __future__ import annotations

import argparse
import sys

#: flag names that differ from the field name (dotted for nested fields)
_FLAG_NAMES = {"loss.kind": "--loss"}
#: fields that get no flag of their own (-q sets progress; the positional/explicit options cover the rest)
_NO_FLAG = {"progress", "loss", "optim"}


def config_flags():
    """``(flag, dotted field, FieldInfo)`` for every FinetuneConfig field, nested loss/optim fields included."""
    from .config import FinetuneConfig, LossConfig, OptimConfig

    for prefix, model in (("", FinetuneConfig), ("loss.", LossConfig), ("optim.", OptimConfig)):
        for name, info in model.model_fields.items():
            if name in _NO_FLAG:
                continue
            dotted = prefix + name
            yield _FLAG_NAMES.get(dotted, "--" + name.replace("_", "-")), dotted, info


def _parse_mapping(text: str) -> dict:
    """``"readouts=2,trunk=0.1"`` -> ``{"readouts": 2.0, "trunk": 0.1}``."""
    out = {}
    for part in filter(None, (x.strip() for x in text.split(","))):
        key, eq, val = part.partition("=")
        if not eq:
            raise argparse.ArgumentTypeError(f"expected NAME=VALUE[,NAME=VALUE...], got {text!r}")
        try:
            out[key.strip()] = float(val)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{key.strip()}: {val!r} is not a number") from None
    return out


def _add_field(p, flag: str, dotted: str, info) -> None:
    import typing

    ann = info.annotation
    args = [a for a in typing.get_args(ann) if a is not type(None)]
    if typing.get_origin(ann) is typing.Union and len(args) == 1:
        ann = args[0]  # Optional[X]
    default = info.get_default(call_default_factory=True)
    default_s = "none" if default is None else (default.get("name") if isinstance(default, dict) and "name" in default
                                                 else default)
    hlp = f"{info.description or dotted} (default {default_s if default_s != {} else 'none'})"
    kw = dict(dest=dotted.replace(".", "__"), default=None, help=hlp)
    if ann is bool:
        p.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        return
    if typing.get_origin(ann) is typing.Literal:
        kw["choices"] = list(typing.get_args(ann))
        ann = type(kw["choices"][0])
    elif typing.get_origin(ann) is dict:
        ann = _parse_mapping
        kw["metavar"] = "GROUP=X,..."
    elif ann not in (int, float, str):
        ann = str
    if "choices" not in kw:
        kw.setdefault("metavar", flag.lstrip("-").upper().replace("-", "_"))
    p.add_argument(flag, type=ann, **kw)


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
    p.add_argument("--config", default=None,
                   help="YAML/TOML/JSON file with FinetuneConfig fields (a run's manifest.json works; flags override it)")
    p.add_argument("--preset", default=None, help="start from a named preset: safe (the defaults) or mace-torch "
                                                  "(the settings before the few-frame defaults)")
    p.add_argument("--resume", action="store_true", help="continue the run in --output from its checkpoint")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    for flag, dotted, info in config_flags():
        _add_field(p, flag, dotted, info)
    p.set_defaults(func=_cmd_finetune)


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="energy/force/stress errors of a model on labelled frames, overall and per element")
    p.add_argument("frames", nargs="+", help="labelled frames (extxyz)")
    p.add_argument("--model", required=True, help="model directory, torch checkpoint or model-zoo name")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--head", default=None, help="score this head of a multihead fine-tune (ft or foundation; the "
                                                "model folder must hold heads.safetensors)")
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
    """A FinetuneConfig from ``--preset``, ``--config`` and the explicit flags (in that order)."""
    from ..config import ConfigError, read_config_file
    from .config import FinetuneConfig

    base = FinetuneConfig.preset(args.preset) if args.preset else FinetuneConfig()
    if args.config:
        d = read_config_file(args.config)
        d = d.get("hyperparameters", d)
        base = base.replace(**d)
    changes = {}
    for _, dotted, _ in config_flags():
        v = getattr(args, dotted.replace(".", "__"))
        if v is not None:
            changes[dotted.replace(".", "_", 1) if "." in dotted else dotted] = v
    if args.quiet:
        changes["progress"] = False
    try:
        return base.replace(**changes)
    except ConfigError as exc:  # name the flags, not the python fields
        msg = str(exc)
        for flag, dotted, _ in config_flags():
            if "." in dotted:
                msg = msg.replace(f": {dotted}:", f": {flag}:")
            msg = msg.replace(f"FinetuneConfig: {dotted}:", f"{flag}:")
        raise ConfigError(msg) from None


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
    print(m["outcome"])
    if m.get("validation_note"):
        print("note: " + m["validation_note"])
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
    if "heads" in m["outputs"]:
        print(f"heads: {m['outputs']['heads']} (the model uses head 'ft'; score the other with "
              f"jaxuft evaluate --model {m['outputs']['model']} --head foundation FRAMES.xyz)")
    print(f"manifest: {args.output}/manifest.json  metrics: {args.output}/metrics.csv")
    return 0


def _cmd_evaluate(args) -> int:
    from ..api import load
    from .evaluation import evaluate, format_report

    pot = load(args.model, dtype=args.dtype)
    reports = []
    for path in args.frames:
        rep = evaluate(pot, path, batch_size=args.batch_size, energy_key=args.energy_key,
                       forces_key=args.forces_key, stress_key=args.stress_key,
                       name=str(path) if args.head is None else f"{path} (head {args.head})",
                       head=args.head, heads=args.model if args.head is not None else None)
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
