"""``jaxuft run`` (the protocols as one resumable command), ``jaxuft report`` and ``jaxuft config schema|validate``.

    jaxuft run examples/toy_protocols.yaml -o runs/toy        # naive + periodic + evaluation + report
    jaxuft run --resume runs/toy                               # after Ctrl-C, a crash or kill -9
    jaxuft report runs/toy runs/other -o report/
    jaxuft config schema workflow                              # JSON schema of a config
    jaxuft config validate examples/toy_protocols.yaml         # one line per bad field
"""

from __future__ import annotations

import argparse
import json
import sys

CONFIG_KINDS = {
    "workflow": "jaxuft.workflows.config:WorkflowConfig",
    "oracle": "jaxuft.labelling:OracleConfig",
    "qres": "jaxuft.uq.config:QResConfig",
    "md": "jaxuft.md.config:MDConfig",
    "finetune": "jaxuft.finetune.config:FinetuneConfig",
}


def _model(kind: str):
    import importlib

    mod, name = CONFIG_KINDS[kind].split(":")
    return getattr(importlib.import_module(mod), name)


def register(subparsers) -> None:
    p = subparsers.add_parser("run", help="the paper's protocols (naive, periodic, nonperiodic) + evaluation + report, resumable",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", help="workflow config (.yaml/.toml/.json); omit with --resume")
    p.add_argument("-o", "--output", help="run directory")
    p.add_argument("--resume", metavar="RUN", nargs="?", const=True, default=False,
                   help="continue a run directory (its saved config is used when no config is given)")
    p.add_argument("--overwrite", action="store_true", help="clear the run directory first")
    p.add_argument("--no-report", action="store_true", help="skip writing RUN/report")
    p.set_defaults(func=_cmd_run)

    p = subparsers.add_parser("report", help="markdown + PNG report comparing finished runs")
    p.add_argument("runs", nargs="+", help="run directories")
    p.add_argument("-o", "--output", required=True, help="report directory")
    p.set_defaults(func=_cmd_report)

    p = subparsers.add_parser("config", help="JSON schema of a config kind, or validate a config file")
    sp = p.add_subparsers(dest="config_command", metavar="ACTION")
    s = sp.add_parser("schema", help="print the JSON schema")
    s.add_argument("kind", nargs="?", default="workflow", choices=sorted(CONFIG_KINDS))
    s.set_defaults(func=_cmd_schema)
    v = sp.add_parser("validate", help="validate a config file (exit 2 with one line per bad field)")
    v.add_argument("file")
    v.add_argument("--kind", default="workflow", choices=sorted(CONFIG_KINDS))
    v.set_defaults(func=_cmd_validate)
    p.set_defaults(func=lambda args: (p.print_help(), 1)[1])


def _cmd_run(args) -> int:
    from ..config import ConfigError
    from ..progress import configure_logging
    from .run import run_workflow

    configure_logging()
    run_dir = args.output
    if isinstance(args.resume, str):
        if run_dir and run_dir != args.resume:
            raise ConfigError("give the run directory once: --resume RUN (or -o RUN --resume)")
        run_dir = args.resume
    if not run_dir:
        raise ConfigError("give the run directory with -o RUN (or --resume RUN)")
    resume = bool(args.resume)
    if args.config is None and not resume:
        raise ConfigError("give a config file, or --resume RUN to continue a run")
    try:
        results = run_workflow(args.config, run_dir, resume=resume, overwrite=args.overwrite, report=not args.no_report)
    except KeyboardInterrupt:
        print(f"jaxuft run: interrupted; finished stages are kept. Continue with: jaxuft run --resume {run_dir}",
              file=sys.stderr)
        return 130
    for name, ev in results.get("evaluation", {}).items():
        r = ev["residuals"]
        if r.get("n"):
            print(f"{name:12s} E RMSE {r['energy_rmse_meV_atom']:8.2f} meV/atom (centred {r['energy_centred_rmse_meV_atom']:.2f})"
                  f"  F RMSE {r['force_rmse_meV_A']:8.1f} meV/Å  ({r['n']} snapshots)")
    print(f"wrote {run_dir} (report: {run_dir}/report/report.md)" if not args.no_report else f"wrote {run_dir}")
    return 0


def _cmd_report(args) -> int:
    from .report import write_report

    path = write_report(args.runs, args.output)
    print(f"wrote {path}")
    return 0


def _cmd_schema(args) -> int:
    print(json.dumps(_model(args.kind).model_json_schema(), indent=2))
    return 0


def _cmd_validate(args) -> int:
    from ..config import load_config

    cfg = load_config(_model(args.kind), args.file)
    print(f"{args.file}: valid {args.kind} config ({len(cfg.model_dump())} top-level fields)")
    return 0
