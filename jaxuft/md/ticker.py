"""The MD progress bar: moved from inside the compiled scan (a host callback every ``tick_every`` steps, tuned after each chunk to about one tick a second), with rate and ETA."""

from __future__ import annotations

import itertools
import threading

import numpy as np

from ..progress import progress
from . import segment

#: tick period of a disabled bar (never reached: the callback is never taken)
NEVER = 2**30
_TOKENS = itertools.count(1)


class ChunkProgress:
    """A tqdm bar over ``total`` steps advanced by the in-scan ticks of each chunk.

    ``limits()`` gives the runtime arguments (``tick_every``, ``tick_token``) the compiled
    segment needs; ``chunk_done(seconds)`` moves the bar to the end of the chunk and sets
    the tick period from the measured seconds per step."""

    def __init__(self, total: int, chunk_steps: int, n_groups: int, desc: str, enabled: bool | None,
                 interval: float = 1.0):
        self.bar = progress(total=total, desc=desc, unit="step", enabled=enabled, leave=False)
        self.enabled = not self.bar.disable
        self.chunk_steps, self.n_groups, self.interval = int(chunk_steps), max(1, int(n_groups)), float(interval)
        self.base = 0
        self.tick_every = 1 if self.enabled else NEVER  # first chunk: speed unknown, tick every step
        self._lock = threading.Lock()
        self.token = next(_TOKENS) % (2**31 - 1)
        if self.enabled:
            segment._LISTENERS[self.token] = self._on_tick

    def compiling(self, busy: bool) -> None:
        """Say "compiling" on the bar while a new program compiles; the wait does not count in the rate."""
        if not self.enabled:
            return
        if busy:
            self.bar.set_postfix_str("compiling", refresh=True)
        else:
            self.bar.set_postfix_str("", refresh=False)
            self.bar.unpause()

    def limits(self) -> dict:
        return {"tick_every": np.asarray(self.tick_every, np.int32), "tick_token": np.asarray(self.token, np.int32)}

    def _move_to(self, position: int) -> None:
        with self._lock:
            if position > self.bar.n:
                self.bar.update(position - self.bar.n)

    def _on_tick(self, group: int, done: int) -> None:
        within = (group * self.chunk_steps + done) // self.n_groups
        self._move_to(self.base + min(within, self.chunk_steps))

    def chunk_done(self, compute_seconds: float) -> None:
        self.base += self.chunk_steps
        self._move_to(self.base)
        if self.enabled and compute_seconds > 0:
            per_step = compute_seconds / self.chunk_steps
            self.tick_every = int(np.clip(self.interval / per_step, 1, NEVER))

    def close(self) -> None:
        segment._LISTENERS.pop(self.token, None)
        self.bar.close()
