"""``jaxuft paper reproduce PAPER_DATA -o OUT``: the paper's report (markdown + figures + summary.json) from its data."""

from __future__ import annotations

import argparse


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {v}")
    return v


def register(sub) -> None:
    p = sub.add_parser("paper", help="reproduce the paper's analysis from its data (see `jaxuft paper reproduce --help`)")
    psub = p.add_subparsers(dest="paper_command", metavar="ACTION")
    r = psub.add_parser("reproduce", help="write the paper's residual, HCl, density, RDF and Q-residual report",
                        description="Reads PAPER_DATA (the folder holding chclca/ and liclcocl2/) and writes OUT/README.md, "
                                    "its PNG figures and OUT/summary.json. The SOAP + PCA part takes a few minutes on a "
                                    "2-core CPU the first time; descriptors are cached per file (--cache-dir).")
    r.add_argument("paper_data", metavar="PAPER_DATA", help="paper-data folder (holds chclca/ and liclcocl2/)")
    r.add_argument("-o", "--output", required=True, metavar="OUT", help="report directory")
    r.add_argument("--cache-dir", default=None,
                   help="descriptor cache (default OUT/cache; ~3.5 GB for the full data in float32; reused across runs)")
    r.add_argument("--cache-dtype", default="float32", choices=("float32", "float64"),
                   help="storage dtype of cached descriptors (PCA and Q are float64 either way)")
    r.add_argument("--no-qres", action="store_true", help="skip the SOAP + PCA (Q-residual) sections")
    r.add_argument("--max-frames", type=_positive_int, default=None, help="at most N frames per file (quick checks)")
    r.add_argument("--soap-n-max", type=_positive_int, default=8, help="SOAP radial functions (paper: 8)")
    r.add_argument("--soap-l-max", type=_positive_int, default=6, help="SOAP angular degree (paper: 6)")
    r.add_argument("--overwrite", action="store_true", help="replace an existing report in OUT")
    r.add_argument("--resume", action="store_true", help="write into an existing OUT, reusing its descriptor cache")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bars or log messages")
    r.set_defaults(func=cmd_reproduce)
    p.set_defaults(func=lambda args: (p.print_help(), 1)[1])


def cmd_reproduce(args) -> int:
    import logging
    from pathlib import Path

    from ..outdir import claim_output_dir
    from ..progress import configure_logging
    from .paper import check_layout, reproduce

    configure_logging(logging.WARNING if args.quiet else logging.INFO)
    check_layout(Path(args.paper_data))  # fail before touching OUT
    with claim_output_dir(args.output, kind="paper report", overwrite=args.overwrite, resume=args.resume) as out:
        summary = reproduce(args.paper_data, out.path, qres=not args.no_qres, cache_dir=args.cache_dir,
                            cache_dtype=args.cache_dtype, max_frames=args.max_frames, soap_n_max=args.soap_n_max,
                            soap_l_max=args.soap_l_max, show_progress=False if args.quiet else None)
    if not args.quiet:
        res = summary["residuals"]
        print(f"wrote {Path(args.output) / 'README.md'} in {summary['elapsed_s']:.0f} s; energy RMSE (meV/atom): "
              + ", ".join(f"{k} {v['rmse']:.1f}" for k, v in res.items()))
    return 0
