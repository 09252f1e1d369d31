"""JAX's persistent compilation cache for jaxuft: compiled XLA programs kept on disk, one directory per machine.

Most of a short jaxuft job on a CPU is XLA compilation: a MACE MD segment program takes
12-18 s to compile on 2 cores, SOAP over a trajectory ~5 s, and every new process compiled
them again.  With the cache, a later process loads them (benchmarks/bench_compile_cache.py,
2 cores: SOAP over 50 FT5 frames 6.6-10 s -> 2.2-2.5 s; the compile time of ``jaxuft md`` with
MACE-MP-0b small 12.7-15.2 s -> 4.6 s, the rest being tracing in Python; results identical).

* The ``jaxuft`` command turns it on (:func:`enable`); ``import jaxuft`` does not (a library
  must not change its host process unasked): call ``jaxuft.compile_cache.enable()`` first
  thing in a script to opt in.
* Where: ``$JAXUFT_COMPILE_CACHE`` if it names a directory, else
  ``$XDG_CACHE_HOME/jaxuft/xla`` (``~/.cache/jaxuft/xla``), in a subdirectory per machine
  (its CPU, the jax and jaxlib versions): an executable compiled for one CPU is never
  loaded on another (it could use instructions the other lacks).  ``JAXUFT_COMPILE_CACHE=0``
  turns it off.  JAX's own ``jax_compilation_cache_dir``, when already set, is left alone.
* XLA:CPU logs two error lines per program it loads ("Target machine feature
  +prefer-no-gather is not supported on the host machine", jax#38445): those two are LLVM
  tuning hints, not instruction sets, and the program is loaded and used all the same
  (verified: equal results, no recompilation).  :func:`enable` therefore raises XLA's C++ log
  threshold to FATAL unless ``TF_CPP_MIN_LOG_LEVEL`` is set to something other than jax's
  default 1 (``quiet=False`` leaves it).
* Only programs that took at least ``min_compile_seconds`` (0.25 s) to compile are written.
  Programs are small: the SOAP and MACE MD jobs of the benchmark left 4 programs, 0.5 MB; the
  toy protocols run (``jaxuft run examples/toy_protocols.yaml``) 68 programs, 0.7 MB, with no
  threshold.  Nothing is evicted: delete the directory to empty it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import sys
from pathlib import Path

#: values of ``$JAXUFT_COMPILE_CACHE`` that turn the cache off
_OFF = ("0", "false", "no", "off", "none", "disabled")

_enabled: Path | None = None
log = logging.getLogger(__name__)


def machine_key() -> str:
    """A short hash of what a compiled CPU program depends on: the CPU (model and feature flags),
    the OS and architecture, and the jax and jaxlib versions."""
    import jax
    import jaxlib

    cpu = ""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
        lines = [ln for ln in text.splitlines() if ln.startswith(("model name", "flags", "Features", "CPU part"))]
        cpu = "\n".join(sorted(set(lines)))
    except OSError:
        cpu = platform.processor()
    parts = [sys.platform, platform.machine(), cpu, jax.__version__, jaxlib.__version__]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def default_directory() -> Path | None:
    """The cache directory :func:`enable` would use (None: turned off by ``$JAXUFT_COMPILE_CACHE``)."""
    setting = os.environ.get("JAXUFT_COMPILE_CACHE", "").strip()
    if setting.lower() in _OFF:
        return None
    if setting:
        base = Path(setting).expanduser()
    else:
        try:
            base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "jaxuft" / "xla"
        except RuntimeError:  # no home directory to put it in
            return None
    return base / machine_key()


def enable(directory: str | os.PathLike | None = None, min_compile_seconds: float = 0.25,
           quiet: bool = True) -> Path | None:
    """Turn JAX's persistent compilation cache on (once per process); returns its directory.

    None when it stays off: ``$JAXUFT_COMPILE_CACHE=0``, JAX's cache already pointed elsewhere
    (``jax_compilation_cache_dir``, kept), or the directory cannot be created.  Call it before
    the first jitted computation (JAX initialises its cache with the first compilation).
    ``directory``: the per-machine directory itself (default: :func:`default_directory`)."""
    global _enabled
    if _enabled is not None:
        return _enabled
    import jax
    from jaxlib.version import __version_info__ as jaxlib_version

    if jax.config.jax_compilation_cache_dir:  # the user's own setting wins
        return None
    if sys.platform == "darwin" and jaxlib_version < (0, 10):
        return None  # jaxlib < 0.10 on macOS crashes loading large cached CPU programs (SIGBUS in LLVM ORC)
    path = Path(directory) if directory is not None else default_directory()
    if path is None:
        return None
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        log.warning("compilation cache off: cannot create %s (%s); set JAXUFT_COMPILE_CACHE to a writable "
                    "directory, or to 0", path, exc.strerror or exc)
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_seconds))
    if quiet and os.environ.get("TF_CPP_MIN_LOG_LEVEL", "1") == "1":  # "1": jax's own default (jax/__init__.py)
        _quiet_cpu_loader_errors()
    _enabled = path
    return path


def _quiet_cpu_loader_errors() -> None:
    """XLA's C++ log threshold to FATAL (what ``TF_CPP_MIN_LOG_LEVEL=3`` does at start-up), so that
    every cached program's two spurious loader errors stay off the terminal."""
    try:
        from jax._src.lib import utils

        utils.absl_set_min_log_level(3)
    except (ImportError, AttributeError):  # another jaxlib: its lines stay visible, nothing else changes
        pass
