"""Turn ``jaxuft bench`` JSON reports into a dated RESULTS.md section (``python -m jaxuft.bench.record``).

    python -m jaxuft.bench.record --results benchmarks/RESULTS.md --title "GPU suite" a.json b.json [--torch t.json]

Rows keep every measured item; the notes name the device, versions and load, and summarise the
MD replica series (atom-steps/s at each R and the per-atom-step cost against R = 1).  ``--torch``
adds a mace-torch reference measured on the same weights (a JSON object written by
benchmarks/gpu_suite.sh) with its ratio to jaxuft's rows of the same model.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import fcntl
import json
import sys
from pathlib import Path

HEADER = ["model", "item", "system", "atoms", "replicas", "compile s", "steady", "rate", "cost/atom-step vs R=1 (or 1x)",
          "peak RSS GB", "device peak GB"]


def _g(v, fmt="{:.4g}"):
    return "-" if v is None else (fmt.format(v) if isinstance(v, float) else str(v))


def steady_and_rate(r: dict, soap_parts: bool = False) -> tuple[str, str]:
    """The steady-state time and the throughput of one result, as text (SOAP + Q split when asked)."""
    if r["item"].startswith("md"):
        return f"{r['ms_per_step']:.4g} ms/step", f"{r['atom_steps_per_s']:.4g} atom-steps/s"
    if r["item"] == "energy-forces":
        return f"{r['ms']:.4g} ms", f"{r['atoms_per_s']:.4g} atoms/s"
    if r["item"] == "finetune":
        return f"{r['ms_per_step']:.4g} ms/step", f"{r['atoms_per_s']:.4g} atoms/s"
    if soap_parts:
        return f"SOAP {r['soap_ms']:.4g} + Q {r['q_ms']:.3g} ms", f"PCA fit {r['pca_fit_s']:.3g} s"
    return f"{r['soap_q_ms']:.4g} ms", f"fit {r['pca_fit_s']:.3g} s"


def rows_of(report: dict) -> list[list[str]]:
    out = []
    for r in report.get("results", []):
        base = [r.get("model", "-"), r["item"], r.get("system", "-"), _g(r.get("atoms")), _g(r.get("replicas"))]
        if "error" in r or "skipped" in r:
            out.append(base + ["-", ("error: " + r["error"]) if "error" in r else ("skipped: " + r["skipped"])]
                       + ["-"] * 4)
            continue
        steady, rate = steady_and_rate(r, soap_parts=True)
        out.append(base + [_g(r.get("compile_s"), "{:.3g}"), steady, rate, _g(r.get("cost_vs_r1", r.get("cost_vs_1x", r.get("cost_vs_first"))), "{:.3g}"),
                           _g(r.get("peak_rss_gb"), "{:.3g}"), _g(r.get("device_peak_gb"), "{:.3g}")])
    return out


def replica_summary(reports: list[dict]) -> list[str]:
    lines = []
    for rep in reports:
        series = {}
        for r in rep.get("results", []):
            if r["item"] == "md-replicas" and "cost_vs_r1" in r:
                series.setdefault((r["model"], r["system"]), []).append(r)
        for (model, system), rs in series.items():
            parts = [f"R={r['replicas']}: {r['atom_steps_per_s']:.4g} atom-steps/s (cost/atom-step vs R=1 "
                     f"{r['cost_vs_r1']:.3g})" for r in rs]
            lines.append(f"{model} MD on {system}: " + "; ".join(parts) + ".")
    return lines


def torch_summary(torch_ref: dict, reports: list[dict]) -> list[str]:
    lines = [f"mace-torch reference ({torch_ref.get('versions', {})}) on {torch_ref.get('device')}, same weights "
             f"({torch_ref.get('model')}): energy+forces {torch_ref['ef_ms']:.4g} ms, ASE Langevin "
             f"{torch_ref['md_ms_per_step']:.4g} ms/step ({torch_ref['atoms']} atoms)."]
    for rep in reports:
        for r in rep.get("results", []):
            if r.get("model") != torch_ref.get("model"):
                continue
            if r["item"] == "energy-forces" and "ms" in r:
                lines.append(f"energy+forces: mace-torch / jaxuft = {torch_ref['ef_ms'] / r['ms']:.2f}x.")
            if r["item"] == "md-replicas" and r.get("replicas") == 1 and "ms_per_step" in r:
                lines.append(f"MD, one trajectory: mace-torch+ASE / jaxuft = {torch_ref['md_ms_per_step'] / r['ms_per_step']:.2f}x.")
    return lines


def section(title: str, reports: list[dict], torch_ref: dict | None = None, extra: str = "") -> str:
    first = reports[0]
    d, v = first["device"], first["versions"]
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    host = first.get("host", {})
    lines = [f"\n## {title} — {stamp}\n",
             f"Machine: {d.get('count')} x {d.get('kind')} ({d.get('backend')}"
             + (f", {d['memory_gb']} GiB" if d.get("memory_gb") else "") + f"), host {host.get('cpu')} x{host.get('cores')}; "
             + ", ".join(f"{k} {val}" for k, val in v.items()) + "\n"]
    notes = [f"`jaxuft bench` reports ({', '.join(r['date'] for r in reports)}); MD: Langevin 300 K, 0.5 fs, "
             f"{first['settings']['dtype']}, {first['settings']['steps']} timed steps after a compiled first segment; "
             "compile s = first call minus a steady call; MACE = MACE-MP-0b-small architecture, random weights; "
             f"load average at the end {', '.join(f'{x:.1f}' for x in (first.get('load_average') or []))}."]
    notes += replica_summary(reports)
    if torch_ref:
        notes += torch_summary(torch_ref, reports)
    if extra:
        notes.append(extra)
    lines.append(" ".join(notes) + "\n")
    lines.append("| " + " | ".join(HEADER) + " |")
    lines.append("|" + "---|" * len(HEADER))
    for rep in reports:
        for row in rows_of(rep):
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("reports", nargs="+", help="jaxuft bench JSON files (missing ones are skipped)")
    ap.add_argument("--results", required=True, help="RESULTS.md to append to")
    ap.add_argument("--title", default="jaxuft bench")
    ap.add_argument("--torch", default=None, help="mace-torch reference JSON (gpu_suite.sh)")
    ap.add_argument("--extra", default="", help="one more sentence for the notes")
    args = ap.parse_args(argv)
    reports = []
    for p in args.reports:
        try:
            reports.append(json.loads(Path(p).read_text()))
        except (OSError, ValueError) as exc:
            print(f"[record] skipping {p}: {exc}", file=sys.stderr)
    if not reports:
        print("[record] no report to record", file=sys.stderr)
        return 1
    torch_ref = None
    if args.torch and Path(args.torch).is_file():
        try:
            torch_ref = json.loads(Path(args.torch).read_text())
        except ValueError:
            torch_ref = None
    text = section(args.title, reports, torch_ref, args.extra)
    with open(args.results, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
