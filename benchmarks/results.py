"""Append dated, machine-stamped rows to benchmarks/RESULTS.md (shared by all benchmark scripts)."""

from __future__ import annotations

import datetime as _dt
import fcntl
import os
import platform
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")


def machine() -> str:
    """One-line description of where this ran (CPU model, cores, accelerator, versions)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    parts = [f"{cpu} x{os.cpu_count()}"]
    try:
        import jax

        dev = jax.devices()[0]
        parts.append(f"jax {jax.__version__} on {dev.platform}:{getattr(dev, 'device_kind', '')}")
    except Exception:  # pragma: no cover - jax missing
        pass
    parts.append(f"python {platform.python_version()}")
    return ", ".join(parts)


def table(header: list[str], rows: list[list]) -> str:
    """A markdown table (floats to 4 significant digits)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        lines.append("| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in r) + " |")
    return "\n".join(lines)


def record(title: str, header: list[str], rows: list[list], notes: str = "", dry_run: bool = False) -> str:
    """``append`` the table to RESULTS.md, or with ``dry_run`` (a script's --no-append) only print it."""
    if not dry_run:
        return append(title, header, rows, notes)
    text = notes.rstrip() + "\n" + table(header, rows)
    print(text)
    return text


def append(title: str, header: list[str], rows: list[list], notes: str = "") -> str:
    """Append a markdown table under a dated heading; returns the text written."""
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"\n## {title} — {stamp}\n", f"Machine: {machine()}\n"]
    if notes:
        lines.append(notes.rstrip() + "\n")
    lines.append(table(header, rows))
    text = "\n".join(lines) + "\n"
    with open(RESULTS, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        if f.tell() == 0:
            f.write("# Benchmark results\n\nRows are appended by the scripts in this folder; newest last.\n")
        f.write(text)
    print(text)
    return text
