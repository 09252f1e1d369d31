"""Progress and logging for long work: stdlib ``logging`` for messages, tqdm bars with rate and ETA.

    from jaxuft.progress import get_logger, progress
    log = get_logger(__name__)
    with progress(total=n, desc="label", unit="frame") as bar:
        ...; bar.update(1)

Bars go to stderr and disappear when not a terminal unless ``JAXUFT_PROGRESS=1``;
``JAXUFT_PROGRESS=0`` hides them everywhere. ``configure_logging()`` (the CLI calls it)
prints INFO messages as ``HH:MM:SS message``, routed through tqdm so bars stay intact.
"""

from __future__ import annotations

import logging
import os
import sys

__all__ = ["get_logger", "progress", "configure_logging", "progress_enabled"]


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name if name.startswith("jaxuft") else f"jaxuft.{name}")


def progress_enabled(default: bool | None = None) -> bool:
    env = os.environ.get("JAXUFT_PROGRESS")
    if env is not None:
        return env not in ("0", "false", "no", "")
    if default is not None:
        return default
    return sys.stderr.isatty()


def progress(total=None, desc: str = "", unit: str = "it", enabled: bool | None = None, **kw):
    """A tqdm bar on stderr (rate and ETA shown); a no-op bar when disabled."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not progress_enabled(enabled), file=sys.stderr,
                dynamic_ncols=True, mininterval=0.5, **kw)


class _TqdmHandler(logging.StreamHandler):
    def emit(self, record):
        try:
            from tqdm.auto import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # never let logging break a run
            self.handleError(record)


def configure_logging(level: int | str = logging.INFO) -> None:
    """Readable jaxuft logs on stderr (idempotent)."""
    logger = logging.getLogger("jaxuft")
    if any(isinstance(h, _TqdmHandler) for h in logger.handlers):
        logger.setLevel(level)
        return
    h = _TqdmHandler()
    h.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
    logger.addHandler(h)
    logger.setLevel(level)
    logger.propagate = False
