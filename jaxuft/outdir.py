"""Output directories that are never clobbered: refuse another run's files, lock against a second writer.

    with claim_output_dir(path, kind="md", overwrite=args.overwrite, resume=args.resume) as out:
        ...write into out.path...

* an existing directory holding files is refused unless ``overwrite`` (its contents are
  cleared first) or ``resume`` (they are kept for the caller to continue from);
* a lock (``.jaxuft.lock``, ``fcntl.flock``) stops two processes writing one directory; the
  kernel drops it when the holder dies, even by ``kill -9``, so a killed run never leaves a
  stale lock;
* writability and free space are checked before any work starts.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .errors import JaxuftError

__all__ = ["OutputDirError", "OutputDir", "claim_output_dir", "LOCK_NAME"]

LOCK_NAME = ".jaxuft.lock"
#: refuse to start with less free space than this (bytes) unless the caller asks for another figure
DEFAULT_MIN_FREE = 64 * 1024 * 1024


class OutputDirError(JaxuftError, OSError):
    """An output directory cannot be used (another run's files, locked, read-only, full)."""


@dataclass
class OutputDir:
    path: Path
    resumed: bool
    _lock_fd: int | None = None

    def release(self) -> None:
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
                os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> "OutputDir":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _contents(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.name != LOCK_NAME)


def claim_output_dir(
    path: str | os.PathLike,
    *,
    kind: str = "run",
    overwrite: bool = False,
    resume: bool = False,
    min_free_bytes: int = DEFAULT_MIN_FREE,
    flag_prefix: str = "--",
) -> OutputDir:
    """Create/lock ``path`` for writing; see the module docstring.  Returns an :class:`OutputDir`
    (a context manager that releases the lock)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputDirError(f"output {path} exists and is not a directory; choose a directory path")
    if overwrite and resume:
        raise OutputDirError(f"choose {flag_prefix}overwrite or {flag_prefix}resume, not both")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputDirError(f"cannot create output directory {path}: {exc.strerror}; choose a writable location") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise OutputDirError(f"output directory {path} is not writable; choose another with -o")
    try:
        fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise OutputDirError(f"cannot write in {path}: {exc.strerror}; choose a writable directory") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            holder = ""
            with contextlib.suppress(OSError):
                holder = (path / LOCK_NAME).read_text().strip()
            raise OutputDirError(
                f"{path} is being written by another jaxuft process{f' ({holder})' if holder else ''}; "
                "wait for it to finish or choose another output directory"
            ) from None
        raise
    out = OutputDir(path=path, resumed=False, _lock_fd=fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} ({kind})\n".encode())
        existing = _contents(path)
        if existing:
            if overwrite:
                for name in existing:
                    p = path / name
                    if p.is_dir() and not p.is_symlink():
                        shutil.rmtree(p)
                    else:
                        p.unlink()
            elif resume:
                out.resumed = True
            else:
                shown = ", ".join(existing[:5]) + (", ..." if len(existing) > 5 else "")
                raise OutputDirError(
                    f"{path} already holds files ({shown}); pass {flag_prefix}resume to continue that {kind}, "
                    f"{flag_prefix}overwrite to replace it, or choose another output directory"
                )
        free = shutil.disk_usage(path).free
        if free < min_free_bytes:
            raise OutputDirError(
                f"only {free / 2**20:.0f} MiB free in {path} (at least {min_free_bytes / 2**20:.0f} MiB needed); "
                "free some space or choose another output directory"
            )
    except BaseException:
        out.release()
        raise
    return out
