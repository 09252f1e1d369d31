"""A small markdown report writer: headings, paragraphs, tables of numbers and figures (paths relative to the report)."""

from __future__ import annotations

import math
import os
from pathlib import Path

from ..fileio import atomic_write_text


def fmt(x, digits: int = 2) -> str:
    """A number for a table: fixed ``digits`` decimals for floats, ``–`` for None/NaN, ints as is."""
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return str(x)
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    if math.isnan(v):
        return "–"
    return f"{v:.{digits}f}"


class Report:
    """Collects markdown; ``write(path)`` saves it atomically.  Figures are linked relative to the report."""

    def __init__(self, directory: str | os.PathLike, title: str):
        self.directory = Path(directory)
        self.parts: list[str] = [f"# {title}\n"]

    def heading(self, text: str, level: int = 2) -> None:
        self.parts.append(f"{'#' * level} {text}\n")

    def paragraph(self, text: str) -> None:
        self.parts.append(text.strip() + "\n")

    def bullets(self, items) -> None:
        self.parts.append("\n".join(f"- {i}" for i in items) + "\n")

    def table(self, headers, rows, digits: int | dict = 2) -> None:
        """``rows``: lists of cells; floats are formatted with ``digits`` decimals (a dict maps column -> digits)."""
        def cell(j, v):
            d = digits.get(j, 2) if isinstance(digits, dict) else digits
            return fmt(v, d) if not isinstance(v, str) else v

        lines = ["| " + " | ".join(str(h) for h in headers) + " |", "|" + "---|" * len(headers)]
        for r in rows:
            lines.append("| " + " | ".join(cell(j, v) for j, v in enumerate(r)) + " |")
        self.parts.append("\n".join(lines) + "\n")

    def figure(self, path: str | os.PathLike, caption: str) -> None:
        rel = os.path.relpath(Path(path), self.directory)
        self.parts.append(f"![{caption}]({rel})\n\n*{caption}*\n")

    def text(self) -> str:
        return "\n".join(self.parts)

    def write(self, name: str = "README.md") -> Path:
        return atomic_write_text(self.directory / name, self.text())
