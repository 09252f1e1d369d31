"""Reproduce the paper's evidence (Wong & Yang, arXiv 2603.10159) from its own data with jaxuft.analysis.

Writes a markdown report with figures and a summary.json:

1. energy residual (model − DFT, meV/atom) of every model (U, N-10..50, NP-10..50, FT1..5) on its own
   evaluation run: PotEng from the LAMMPS thermo log at each DFT snapshot's thermo_row;
2. the residual along the 9 ns runs of N-50 and FT5;
3. HCl formation along those runs (an H within 1.6 Å of a Cl; a cutoff scan and a cutoff-free count);
4. densities of every run from the thermo logs, and of the training sets;
5. RDFs (H–Cl, O–H, Cl–O) of the 9 ns runs;
6. SOAP (r_cut 5, n_max 8, l_max 6, sigma 0.375, periodic) + PCA(5) on N-50, FT5, NP-50 and N-50 + FT5:
   explained variance, Q per element with mean + 2σ limits for every evaluation run and the 9 ns runs;
7. the same Q-residual comparison for the second system's training sets (liclcocl2).

Usage::

    python examples/paper_reproduce.py [--data ../shared/paper-data] [--out out/paper] [--no-qres] [--max-frames N]

The same as ``jaxuft paper reproduce PAPER_DATA -o OUT``.  On a 2-core CPU the first run takes about
ten minutes (SOAP of ~480 frames and four streamed PCA fits); descriptors are cached per file
(``--cache-dir``, default OUT/cache), so later runs take a few minutes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "paper-data"), help="paper-data folder")
    ap.add_argument("--out", default="out/paper", help="report directory")
    ap.add_argument("--cache-dir", default=None, help="descriptor cache (default OUT/cache)")
    ap.add_argument("--no-qres", action="store_true", help="skip the SOAP + PCA sections")
    ap.add_argument("--max-frames", type=int, default=None, help="at most N frames per file (quick look)")
    args = ap.parse_args(argv)

    from jaxuft.analysis.paper import HCL_CUTOFF, reproduce
    from jaxuft.progress import configure_logging

    configure_logging()
    try:
        summary = reproduce(args.data, args.out, qres=not args.no_qres, cache_dir=args.cache_dir,
                            max_frames=args.max_frames)
    except FileNotFoundError as exc:
        print(f"paper_reproduce: {exc}", file=sys.stderr)
        return 2
    print(f"{'model':>6} {'frames':>6} {'mean':>8} {'RMSE':>8}  (meV/atom, model − DFT on its own evaluation run)")
    for name, r in summary["residuals"].items():
        print(f"{name:>6} {r['n_eval']:>6} {r['mean']:>8.2f} {r['rmse']:>8.2f}")
    hcl = summary["hcl"]
    for k in ("long N-50", "long FT5"):
        print(f"{k}: {hcl[k]['n_frames_with_bond']} of {hcl[k]['n_frames']} frames with an H–Cl pair < {HCL_CUTOFF:g} Å")
    print(f"report: {Path(args.out) / 'README.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
