"""Which MD frames get labelled: uniform in time over a window of each replica, the first N, or highest Q-residual first."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from ase import Atoms

__all__ = ["window_indices", "uniform_in_window", "split_count", "select_uniform", "select_first", "select_qres",
           "strip_results"]


def window_indices(n_valid: int, window: str) -> np.ndarray:
    """Indices of the recorded frames inside the window (``second-half`` or ``all``)."""
    start = n_valid // 2 if window == "second-half" else 0
    return np.arange(start, n_valid)


def uniform_in_window(candidates: np.ndarray, n: int) -> np.ndarray:
    """``n`` indices evenly spread over ``candidates``, ending at its last entry (all of them if fewer)."""
    m = len(candidates)
    if n >= m:
        return candidates
    picks = (np.arange(1, n + 1) * m) // n - 1
    return candidates[picks]


def split_count(total: int, parts: int) -> list[int]:
    """``total`` split over ``parts`` as evenly as possible, the first parts taking the remainder."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def strip_results(atoms: Atoms) -> Atoms:
    """A copy without the model's results (the oracle labels it), keeping positions, cell and info."""
    a = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    a.info.update({k: v for k, v in atoms.info.items() if k in ("step", "time_fs", "replica", "temperature_K")})
    return a


def select_uniform(replica_frames: Sequence[Sequence[Atoms]], n_total: int, window: str = "second-half") -> list[Atoms]:
    """The paper's selection: ``n_total`` frames spread over the replicas, uniform in time in each window."""
    counts = split_count(n_total, len(replica_frames))
    out = []
    for frames, n in zip(replica_frames, counts):
        if n == 0 or not frames:
            continue
        idx = uniform_in_window(window_indices(len(frames), window), n)
        out += [strip_results(frames[i]) for i in idx]
    return out


def select_first(frames: Sequence[Atoms], n: int, every: int = 1) -> list[Atoms]:
    """The nonperiodic control: the first ``n`` frames taken every ``every`` recorded frames (after the start)."""
    idx = np.arange(every - 1, len(frames), every)[:n]
    return [strip_results(frames[i]) for i in idx]


def select_qres(replica_frames: Sequence[Sequence[Atoms]], n_total: int, reference: Sequence[Atoms], descriptor,
                n_components: int = 5, window: str = "second-half") -> tuple[list[Atoms], dict]:
    """Frames whose Q-residual exceeds the per-element limit first (largest excess first), then uniform.

    ``reference``: the frames the model was trained on so far (Q limits are fitted on them); with
    none yet, the first half of the trajectory itself is the reference.  Returns ``(frames, info)``.
    """
    from ..uq.analysis import fit_qres, score_frames

    candidates = []
    for frames in replica_frames:
        candidates += [frames[i] for i in window_indices(len(frames), window)]
    if not candidates:
        return [], {"method": "qres", "n_candidates": 0}
    ref = list(reference)
    ref_source = "labels so far"
    if not ref:
        ref = [f for frames in replica_frames for f in frames[: max(1, len(frames) // 2)]]
        ref_source = "first half of the trajectory"
    n_comp = int(min(n_components, max(1, descriptor.compute(ref[:1]).shape[1] - 1)))
    fit = fit_qres(descriptor, ref, n_components=n_comp)
    scored = score_frames(fit.pca, descriptor, candidates)
    lim = fit.limits.array(scored["numbers"], missing=np.inf)
    ratio = scored["q"] / np.where(lim > 0, lim, np.inf)
    per_frame = np.zeros(len(candidates))
    np.maximum.at(per_frame, scored["frame"], ratio)
    over = np.flatnonzero(per_frame > 1.0)
    order = over[np.argsort(-per_frame[over], kind="stable")][:n_total]
    chosen = list(order)
    if len(chosen) < n_total:
        rest = np.setdiff1d(np.arange(len(candidates)), order)
        chosen += list(uniform_in_window(rest, n_total - len(chosen)))
    chosen = sorted(int(i) for i in chosen)
    info = {"method": "qres", "reference": ref_source, "n_candidates": len(candidates), "n_over_limit": int(len(over)),
            "max_ratio": float(per_frame.max()), "n_components": n_comp}
    return [strip_results(candidates[i]) for i in chosen], info
