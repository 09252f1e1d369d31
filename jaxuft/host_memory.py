"""Host allocator settings that make XLA:CPU programs with large temporaries fast.

XLA:CPU allocates its temporaries with ``malloc`` on every call.  With glibc's defaults,
each buffer above the dynamic mmap threshold is a fresh ``mmap`` whose pages fault in
on first touch and are unmapped again on free, and each XLA worker thread allocates
from its own arena, which glibc trims back to the OS.  For an equivariant model on a
few hundred atoms (tens of MB of edge features per call) that is 30-40 % of the step
time on CPU (measured: MACE-MP-0b-small energy+forces+stress on the 197-atom paper
frame, 2 cores, 346 -> 205 ms; see benchmarks/RESULTS.md).

:func:`tune` keeps freed memory in one arena for reuse (``mallopt``: one arena, no
trimming, no mmap below 1 GiB, 1 GiB top pad), on Linux with glibc only; the cost is that
the process keeps its peak heap instead of returning it to the OS.  The ``jaxuft`` command
and the benchmarks apply it at start; ``import jaxuft`` does not (a library must not change
its host process's allocator unasked): call ``jaxuft.host_memory.tune()`` first thing in a
script to opt in.  ``JAXUFT_TUNE_MALLOC=0`` leaves the allocator alone everywhere (or set
the ``MALLOC_*`` environment variables yourself).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# glibc <malloc.h> parameter numbers
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -2, -3, -8
SETTINGS = ((M_ARENA_MAX, 1), (M_TOP_PAD, 1 << 30), (M_MMAP_THRESHOLD, 1 << 30), (M_TRIM_THRESHOLD, 1 << 30))
_ENV_NAMES = {M_ARENA_MAX: "MALLOC_ARENA_MAX", M_TOP_PAD: "MALLOC_TOP_PAD_",
              M_MMAP_THRESHOLD: "MALLOC_MMAP_THRESHOLD_", M_TRIM_THRESHOLD: "MALLOC_TRIM_THRESHOLD_"}


def environment() -> dict:
    """The same settings as glibc environment variables, for a process that does not import
    jaxuft (e.g. a reference run to compare against on equal terms)."""
    return {_ENV_NAMES[param]: str(value) for param, value in SETTINGS}

_applied: bool | None = None


def tune(force: bool = False) -> bool:
    """Apply the allocator settings (once); returns True when they are in effect."""
    global _applied
    if _applied is not None and not force:
        return _applied
    _applied = False
    if os.environ.get("JAXUFT_TUNE_MALLOC", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        if not hasattr(libc, "mallopt") or not hasattr(libc, "gnu_get_libc_version"):
            return False  # not glibc (e.g. musl): leave it alone
        _applied = all(libc.mallopt(param, value) == 1 for param, value in SETTINGS)
    except OSError:
        _applied = False
    return _applied


def applied() -> bool:
    """Whether :func:`tune` changed the allocator in this process."""
    return bool(_applied)
