"""The MD progress bar moves during a chunk (ticks from inside the compiled scan), about once a second
after the first chunk; hiding it runs the same program; where no bar can be watched
(``JAXUFT_PROGRESS=0``) runs use a program without host callbacks (the kind JAX's persistent
compilation cache can keep), with the same results."""

from __future__ import annotations

import numpy as np
from test_md_common import npt_starts, simulation

from jaxuft import md
from jaxuft.md import ticker


def test_bar_moves_within_chunks_without_changing_results(monkeypatch):
    monkeypatch.setenv("JAXUFT_PROGRESS", "1")
    ticks, periods = [], []
    on_tick, chunk_done = ticker.ChunkProgress._on_tick, ticker.ChunkProgress.chunk_done

    def record_tick(self, group, done):
        ticks.append((len(periods), group, done))
        on_tick(self, group, done)

    def record_chunk(self, seconds):
        chunk_done(self, seconds)
        periods.append(self.tick_every)

    monkeypatch.setattr(ticker.ChunkProgress, "_on_tick", record_tick)
    monkeypatch.setattr(ticker.ChunkProgress, "chunk_done", record_chunk)
    sim = simulation("langevin", chunk_steps=200, replica_batch=1)  # 2 groups of one replica
    start = sim.init(npt_starts(), seed=3)
    _, shown = sim.run(start, n_steps=400, record_every=20, progress=True)
    first = [t for t in ticks if t[0] == 0]
    # first chunk: speed unknown, a tick every step of each group (the bar moves within the chunk)
    assert len(first) == 2 * 200 and {g for _, g, _ in first} == {0, 1}
    assert [d for _, g, d in first if g == 0] == list(range(1, 201))
    # then ticks about once a second: the period follows the measured speed
    assert periods[0] >= 1 and len([t for t in ticks if t[0] == 1]) == 2 * (200 // periods[0])
    with md.CompilationCounter() as same:
        sim.run(start, n_steps=400, record_every=20, progress=False)
    assert same.count == 0  # a hidden bar, the same program
    monkeypatch.setenv("JAXUFT_PROGRESS", "0")
    with md.CompilationCounter() as cc:
        _, hidden = sim.run(start, n_steps=400, record_every=20, progress=False)
    assert cc.count == 1  # the tick-free program, once
    with md.CompilationCounter() as again:
        sim.run(start, n_steps=400, record_every=20, progress=False)
    assert again.count == 0
    for k in shown.data:  # two programs: equal up to rounding (XLA may fuse the two differently)
        np.testing.assert_allclose(shown.data[k], hidden.data[k], rtol=1e-10, atol=1e-12, err_msg=k)
