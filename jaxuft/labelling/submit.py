"""Label frames with an oracle on Dask (a LocalCluster, a user's scheduler or Client), reusing and persisting every label.

    res = label_frames(frames, OracleConfig(name="emt"), "run/labels")              # LocalCluster, 2 workers
    res = label_frames(frames, oracle, store, scheduler="tcp://10.0.0.1:8786")     # a cluster's scheduler
    res.frames, res.failed, res.n_computed, res.n_reused, res.timings

Labels already in the store are reused, never recomputed; each new label is written atomically
from the client the moment its future completes, so ``kill -9`` followed by the same call
loses nothing and computes nothing twice. Exceptions, non-finite results, timeouts and dead
workers are retried ``retries`` times, then recorded in the store as failures.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from ..progress import get_logger, progress as progress_bar
from .oracles import LabellingError, OracleConfig, as_oracle, compute_label, make_calculator
from .store import LabelStore, _check_key, label_key, structure_hash

__all__ = ["LabelResult", "label_frames"]

log = get_logger(__name__)
_MAX_ERROR_CHARS = 2000
_GUARD_HINT = ("a script that labels on a LocalCluster must guard its entry point with `if __name__ == \"__main__\":` "
               "(Dask starts each worker by importing the main module again)")


@dataclass
class LabelResult:
    """What :func:`label_frames` returns: the labelled frames in input order and what failed."""

    frames: list                      # successful frames (copies of the inputs) with SinglePointCalculator results
    failed: list[dict]                # {"index", "key", "error", "attempts"} in input order
    n_computed: int                   # labels computed by this call
    n_reused: int                     # labels found in the store
    timings: dict = field(default_factory=dict)
    keys: list[str] = field(default_factory=list)     # the label key of every input frame
    indices: list[int] = field(default_factory=list)  # input position of each entry of ``frames``

    @property
    def n_failed(self) -> int:
        return len(self.failed)


def _check_frames(frames) -> list:
    from ase import Atoms

    if isinstance(frames, Atoms):
        frames = [frames]
    try:
        frames = list(frames)
    except TypeError:
        raise LabellingError(f"frames must be a list of ase.Atoms, got {type(frames).__name__}") from None
    for i, a in enumerate(frames):
        if not isinstance(a, Atoms):
            raise LabellingError(f"frames[{i}] is a {type(a).__name__}, not an ase.Atoms")
        if len(a) == 0:
            raise LabellingError(f"frames[{i}] has no atoms")
        if not np.all(np.isfinite(a.get_positions())):
            raise LabellingError(f"frames[{i}] has non-finite positions")
    return frames


def _n(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _format_error(exc: BaseException) -> str:
    name = type(exc).__name__
    if name == "KilledWorker":
        text = "the worker process died while computing this label (killed, crashed or out of memory: KilledWorker)"
    elif name == "CancelledError":
        text = "the task was cancelled (the scheduler or its workers went away)"
    else:
        text = f"{name}: {exc}"
    return text if len(text) <= _MAX_ERROR_CHARS else text[:_MAX_ERROR_CHARS] + " ..."


def _bare(atoms):
    """What travels to a worker: the structure with its arrays and info, without a calculator."""
    a = atoms.copy()
    a.calc = None
    return a


def _importing_main_in_child() -> bool:
    """True while a spawned process (a Dask worker) runs the top level of the user's script again."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "<module>" and frame.f_globals.get("__name__") == "__mp_main__":
            return True
        frame = frame.f_back
    return False


@contextlib.contextmanager
def _dask_client(scheduler, n_workers: int):
    """A distributed.Client: ours on a fresh LocalCluster, one on ``scheduler``'s address or cluster, or the user's own."""
    try:
        import dask
        import distributed
    except ImportError:
        raise LabellingError("labelling on Dask needs 'distributed' (pip install distributed), "
                             "or pass n_workers=0 to label in this process") from None
    if isinstance(scheduler, distributed.Client):
        yield scheduler, f"the given Dask client ({scheduler.scheduler.address})", None
        return
    if scheduler is None:
        # our own scheduler reports a dead worker at once (we retry, counting attempts, and log it
        # ourselves, so dask's own error logs are silenced); at most n_workers labels are in flight
        # (the third value), so each single-threaded worker holds one label and a crash takes only it down
        if _importing_main_in_child():
            raise LabellingError(_GUARD_HINT)
        try:
            with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
                # no dashboard; the scheduler's small HTTP server takes a free local port instead of 8787
                cluster = distributed.LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                                                   host="127.0.0.1", dashboard_address=None,
                                                   silence_logs=logging.CRITICAL,
                                                   scheduler_kwargs={"dashboard_address": "127.0.0.1:0"})
        except Exception as exc:
            raise LabellingError(f"could not start a local Dask cluster ({type(exc).__name__}: {exc}); if this is "
                                 f"a script, note that {_GUARD_HINT}; or label in this process with n_workers=0") from exc
        try:
            client = distributed.Client(cluster)
            try:
                yield client, f"a local Dask cluster of {_n(n_workers, 'worker')}", n_workers
            finally:
                client.close()
        finally:
            cluster.close()
        return
    if isinstance(scheduler, str) or hasattr(scheduler, "scheduler_address"):
        try:
            client = distributed.Client(scheduler, timeout="30s")
        except (OSError, TimeoutError) as exc:
            raise LabellingError(f"cannot reach the Dask scheduler {scheduler!r}: {exc}; start it (dask scheduler / "
                                 "dask-jobqueue) and pass its address, e.g. scheduler='tcp://host:8786'") from None
        try:
            yield client, f"the Dask scheduler {client.scheduler.address}", None
        finally:
            client.close()
        return
    raise LabellingError(f"scheduler must be None, a 'tcp://host:port' address, a dask cluster or a distributed.Client, "
                         f"got {type(scheduler).__name__}")


class _Book:
    """Retries, store writes and counts shared by the in-process and Dask loops."""

    def __init__(self, frames, keys, shashes, oracle: OracleConfig, store: LabelStore, retries: int, bar):
        self.frames, self.keys, self.shashes = frames, keys, shashes
        self.oracle, self.store, self.retries, self.bar = oracle, store, retries, bar
        self.ohash = oracle.settings_hash()
        self.oracle_json = oracle.model_dump(mode="json")
        self.attempts: dict[str, int] = {}
        self.records: dict[str, dict] = {}
        self.failures: dict[str, dict] = {}
        self.seconds: dict[str, float] = {}

    def success(self, key: str, index: int, out: dict) -> None:
        a = self.frames[index]
        rec = {
            "key": key, "structure_hash": self.shashes[index], "oracle_hash": self.ohash,
            "oracle": self.oracle_json, "energy_reference": self.oracle.energy_reference,
            "numbers": a.get_atomic_numbers(), "positions": a.get_positions(), "cell": np.asarray(a.get_cell()),
            "pbc": a.get_pbc(),
            "energy": out["energy"], "free_energy": out.get("free_energy"), "forces": out["forces"],
            "stress": out.get("stress"),
            "timing": {"seconds": out["seconds"], "attempts": self.attempts[key], "worker": out.get("worker"),
                       "started_at": out.get("started_at"), "finished_at": time.time()},
            "versions": out.get("versions", {}),
        }
        self.store.put(rec)
        self.records[key] = self.store.get(key) or rec
        self.seconds[key] = float(out["seconds"])
        self.bar.update(1)

    def failure(self, key: str, index: int, error: str) -> bool:
        """Record a failed attempt; True when the label should be tried again."""
        n = self.attempts[key]
        if n <= self.retries:
            log.warning("label %s (frame %d): attempt %d of %d failed: %s; retrying", key[:12], index, n,
                        self.retries + 1, error.splitlines()[0] if error else error)
            return True
        log.warning("label %s (frame %d): failed after %d attempts: %s", key[:12], index, n, error)
        rec = {"key": key, "index": index, "error": error, "attempts": n, "oracle": self.oracle_json,
               "structure_hash": self.shashes[index], "failed_at": time.time()}
        self.store.put_failure(rec)
        self.failures[key] = rec
        self.bar.update(1)
        self.bar.set_postfix(failed=len(self.failures))
        return False


def _run_in_process(todo: dict[str, int], book: _Book, timeout) -> None:
    for key, index in todo.items():
        while True:
            book.attempts[key] = book.attempts.get(key, 0) + 1
            try:
                out = compute_label(_bare(book.frames[index]), book.oracle, timeout)
            except Exception as exc:  # any oracle failure is retried, then recorded
                if book.failure(key, index, _format_error(exc)):
                    continue
            else:
                book.success(key, index, out)
            break


def _run_dask(todo: dict[str, int], book: _Book, timeout, client, max_in_flight: Optional[int]) -> None:
    """Submit the labels (at most ``max_in_flight`` at a time; None: all at once) and store each as it completes."""
    from distributed import as_completed

    oracle = book.oracle.model_dump(mode="json")
    token = uuid.uuid4().hex[:8]
    pending: dict[Any, str] = {}
    waiting = list(todo)[::-1]  # popped from the end: input order
    ac = as_completed()

    def fill() -> None:
        while waiting and (max_in_flight is None or len(pending) < max_in_flight):
            submit(waiting.pop())

    def submit(key: str) -> None:
        book.attempts[key] = book.attempts.get(key, 0) + 1
        fut = client.submit(compute_label, _bare(book.frames[todo[key]]), oracle, timeout, pure=False, retries=0,
                            key=f"jaxuft-label-{key[:16]}-{token}-{book.attempts[key]}")
        pending[fut] = key
        ac.add(fut)

    fill()
    try:
        for fut in ac:
            key = pending.pop(fut)
            index = todo[key]
            try:
                out = fut.result()
            except Exception as exc:  # remote exception, KilledWorker, cancellation
                if book.failure(key, index, _format_error(exc)):
                    waiting.append(key)  # next in line
            else:
                book.success(key, index, out)
            finally:
                fut.release()
            fill()
    finally:
        for fut in list(pending):
            fut.cancel()


def label_frames(frames, oracle, store, *, scheduler=None, n_workers: int = 2, retries: int = 2,
                 timeout: Optional[float] = None, min_success: int = 1, progress: bool = True,
                 keys: Optional[list[str]] = None, retry_failed: bool = True) -> LabelResult:
    """Label ``frames`` (a list of ase.Atoms) with ``oracle``; labels live in the directory ``store``.

    scheduler: None -> a ``distributed.LocalCluster`` of ``n_workers`` single-threaded worker
        processes, started and closed here; a ``"tcp://host:port"`` address or a dask cluster
        object (e.g. dask-jobqueue's SLURMCluster) -> a Client to it; a ``distributed.Client`` is
        used as is. ``n_workers=0`` (with no scheduler) labels in this process, without Dask.
    retries: further attempts after a failed one (exception, non-finite result, timeout, dead worker).
    timeout: seconds one label may take (each attempt then runs in its own child process); None: no limit.
    min_success: fewer successful labels than this raises :class:`LabellingError` (after all are tried).
    keys: your own label keys (one per frame, usable as file names) instead of the structure+oracle hash.
    retry_failed: recompute labels recorded as failed by an earlier call (else report them failed again).
    """
    t_start = time.perf_counter()
    oracle = as_oracle(oracle)
    frames = _check_frames(frames)
    for name, value, low in (("n_workers", n_workers, 0), ("retries", retries, 0), ("min_success", min_success, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise LabellingError(f"{name} must be an integer >= {low}, got {value!r}")
    if timeout is not None and not (isinstance(timeout, (int, float)) and timeout > 0):
        raise LabellingError(f"timeout must be a positive number of seconds or None, got {timeout!r}")
    if min_success > len(frames):
        raise LabellingError(f"min_success={min_success} but only {len(frames)} frames were given; lower min_success")
    if not isinstance(store, LabelStore):
        store = LabelStore(store)
    store.ensure()
    if oracle.stress:
        bad = [i for i, a in enumerate(frames) if not np.all(a.pbc)]
        if bad:
            raise LabellingError(f"oracle asks for stress but frame {bad[0]} is not periodic in 3D; set stress to None or false")

    shashes = [structure_hash(a) for a in frames]
    if keys is None:
        keys = [label_key(a, oracle) for a in frames]
    else:
        keys = [_check_key(k) for k in keys]
        if len(keys) != len(frames):
            raise LabellingError(f"keys has {len(keys)} entries for {len(frames)} frames; give one key per frame")
        first: dict[str, int] = {}
        for i, k in enumerate(keys):
            j = first.setdefault(k, i)
            if shashes[j] != shashes[i]:
                raise LabellingError(f"keys[{j}] and keys[{i}] are both {k!r} but the frames differ; give distinct keys")

    ohash = oracle.settings_hash()
    records: dict[str, dict] = {}
    earlier_failures: dict[str, dict] = {}
    todo: dict[str, int] = {}
    for i, k in enumerate(keys):
        if k in records or k in todo or k in earlier_failures:
            continue
        rec = store.get(k)
        if rec is not None:
            if rec.get("structure_hash") != shashes[i] or rec.get("oracle_hash") != ohash:
                what = "structure" if rec.get("structure_hash") != shashes[i] else "oracle settings"
                raise LabellingError(f"label {k!r} in {store.path} was computed for another {what} than frame {i}; "
                                     "use another store or other keys")
            records[k] = rec
            continue
        if not retry_failed:
            f = store.get_failure(k)
            if f is not None:
                earlier_failures[k] = f
                continue
        todo[k] = i
    n_reused = len(records)

    if todo:
        make_calculator(oracle)  # a missing package or bad kwargs fails here, before any worker starts
    where = "this process" if (scheduler is None and n_workers == 0) else None
    timings: dict[str, Any] = {"setup_s": 0.0, "labels_s": 0.0}
    with progress_bar(total=len(todo), desc=f"label ({oracle.label})", unit="frame",
                      enabled=None if progress else False) as bar:
        book = _Book(frames, keys, shashes, oracle, store, retries, bar)
        if todo:
            if where is not None:
                log.info("labelling %s with %s in %s: %d reused from %s, %d to compute",
                         _n(len(frames), "frame"), oracle.label, where, n_reused, store.path, len(todo))
                t0 = time.perf_counter()
                _run_in_process(todo, book, timeout)
                timings["labels_s"] = time.perf_counter() - t0
            else:
                t0 = time.perf_counter()
                with _dask_client(scheduler, n_workers) as (client, where, max_in_flight):
                    timings["setup_s"] = time.perf_counter() - t0
                    log.info("labelling %s with %s on %s: %d reused from %s, %d to compute",
                             _n(len(frames), "frame"), oracle.label, where, n_reused, store.path, len(todo))
                    t1 = time.perf_counter()
                    _run_dask(todo, book, timeout, client, max_in_flight)
                    timings["labels_s"] = time.perf_counter() - t1
        elif frames:
            log.info("labelling %s with %s: all %s reused from %s", _n(len(frames), "frame"), oracle.label,
                     _n(n_reused, "label"), store.path)

    records.update(book.records)
    failures = {**earlier_failures, **book.failures}
    out_frames, indices, failed = [], [], []
    for i, (a, k) in enumerate(zip(frames, keys)):
        if k in records:
            f = store.to_atoms(records[k], atoms=a)
            f.info["label_index"] = i
            out_frames.append(f)
            indices.append(i)
        else:
            fr = failures[k]
            failed.append({"index": i, "key": k, "error": fr.get("error"), "attempts": fr.get("attempts")})
    secs = list(book.seconds.values())
    timings.update({"total_s": time.perf_counter() - t_start, "label_seconds": dict(book.seconds),
                    "mean_label_s": float(np.mean(secs)) if secs else None, "where": where})
    result = LabelResult(out_frames, failed, n_computed=len(book.records), n_reused=n_reused, timings=timings,
                         keys=list(keys), indices=indices)
    if todo:
        log.info("labelled %s in %.1f s (%s per label), %d reused, %d failed", _n(result.n_computed, "new frame"),
                 timings["labels_s"], f"{timings['mean_label_s']:.2f} s" if secs else "n/a", n_reused, len(failed))
    if len(out_frames) < min_success:
        first_err = failed[0]["error"] if failed else "none"
        raise LabellingError(f"only {len(out_frames)} of {len(frames)} frames were labelled (min_success={min_success}); "
                             f"{len(failed)} failed, the first (frame {failed[0]['index'] if failed else '-'}) with: "
                             f"{first_err}. Failures are recorded in {store.failed_dir}; fix the oracle and run again "
                             "(finished labels are reused)")
    return result
