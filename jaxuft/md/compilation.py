"""Count XLA compilations (and the time they take), e.g. to prove that new params recompile nothing.

Usage::

    from jaxuft.md.compilation import CompilationCounter

    with CompilationCounter() as cc:
        sim.run(state, new_params, 100)
    assert cc.count == 0, cc.names

The counter listens to JAX's ``/jax/core/compile/backend_compile_duration``
monitoring event, which fires once per XLA backend compilation (cache hits of
already-compiled functions fire nothing).  Counters nest and may be used from
several places at once; one process-wide listener feeds all active counters.
"""

from __future__ import annotations

import threading

import jax

_EVENT = "/jax/core/compile/backend_compile_duration"
_lock = threading.Lock()
_active: list["CompilationCounter"] = []
_installed = False


def _listener(event: str, duration: float, **kwargs) -> None:
    if event != _EVENT:
        return
    name = str(kwargs.get("fun_name", "?"))
    with _lock:
        for c in _active:
            c._record(name, duration)


def _install() -> None:
    global _installed
    with _lock:
        if not _installed:
            jax.monitoring.register_event_duration_secs_listener(_listener)
            _installed = True


class CompilationCounter:
    """Context manager (or start/stop object) counting XLA compilations.

    Attributes: ``count`` (number of compilations), ``seconds`` (backend compile
    time, s) and ``names`` (compiled function names, in order).
    """

    def __init__(self):
        self.count = 0
        self.seconds = 0.0
        self.names: list[str] = []
        _install()

    def _record(self, name: str, duration: float) -> None:
        self.count += 1
        self.seconds += float(duration)
        self.names.append(name)

    def start(self) -> "CompilationCounter":
        with _lock:
            if self not in _active:
                _active.append(self)
        return self

    def stop(self) -> "CompilationCounter":
        with _lock:
            if self in _active:
                _active.remove(self)
        return self

    def __enter__(self) -> "CompilationCounter":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"CompilationCounter(count={self.count}, seconds={self.seconds:.3f})"
