"""The Q-residual workflow on lists of structures: descriptors -> PCA -> per-atom Q, T² -> tables.

Used by ``jaxuft qres`` and ``examples/paper_qresidual.py``::

    desc = soap_descriptor(species_of(train))            # or ModelDescriptor("sevennet-0")
    fit = fit_qres(desc, train, n_components=5)          # PCA + training Q + per-element limits
    res = score_frames(fit.pca, desc, frames)            # per-atom q, t2, numbers, scores
    table = element_table(res, fit.limits)               # per-element mean/std/max/fraction over limit
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
from ase import Atoms

from .aggregate import frame_index, per_element, per_structure
from .limits import ElementLimits
from .pca import PCA, CovarianceAccumulator


def _progress(it, total, desc, enabled, unit="frame", weight=None):
    """Yield from ``it`` with a jaxuft.progress bar (rate, ETA); ``weight(item)`` counts units per item."""
    from ..progress import progress

    if enabled is False:
        yield from it
        return
    with progress(total=total, desc=desc, unit=unit, enabled=enabled, leave=False) as bar:
        for item in it:
            yield item
            bar.update(weight(item) if weight else 1)


def descriptors_per_frame(descriptor, frames: Sequence[Atoms], progress: bool | None = False,
                          label: str = "descriptors") -> list[np.ndarray]:
    """One host array ``(n_atoms_k, n_features)`` per frame (``progress``: a bar; None: only on a terminal)."""
    frames = list(frames)
    it = descriptor.compute_iter(frames)
    return [np.asarray(x, dtype=np.float64) for x in _progress(it, len(frames), label, progress)]


def _rechunk(arrays: Iterable[np.ndarray], rows: int):
    """Regroup per-frame arrays into chunks of about ``rows`` rows (fewer, larger device steps)."""
    buf, n = [], 0
    for a in arrays:
        buf.append(a)
        n += len(a)
        if n >= rows:
            yield np.concatenate(buf)
            buf, n = [], 0
    if buf:
        yield np.concatenate(buf)


def accumulate(arrays: Iterable[np.ndarray], dtype: str = "float64", chunk_rows: int = 2048) -> CovarianceAccumulator:
    """Streamed moments of per-frame descriptor arrays (merge several with ``acc.merge``)."""
    acc = CovarianceAccumulator(dtype)
    for c in _rechunk(arrays, chunk_rows):
        acc.update(c)
    return acc


#: rows per device step when streaming descriptors into the covariance (bounds the transient chunk copies)
_STREAM_ROWS = 1024


def fit_pca(
    arrays: Sequence[np.ndarray] | CovarianceAccumulator | Sequence[CovarianceAccumulator],
    n_components=5,
    scale: bool = False,
    dtype: str = "float64",
    svd_max_elements: int = 20_000_000,
    **kwargs,
) -> PCA:
    """Fit a PCA on stacked per-frame arrays (exact SVD when small, streamed covariance otherwise), or on
    one or several accumulators (left intact; several are fitted together)."""
    pca = PCA(n_components, scale=scale, dtype=dtype, svd_max_elements=svd_max_elements, **kwargs)
    if isinstance(arrays, CovarianceAccumulator) or (
        isinstance(arrays, (list, tuple)) and arrays and all(isinstance(a, CovarianceAccumulator) for a in arrays)
    ):  # read in place (several: the PCA of their data sets together, without merging them)
        return pca.fit_accumulator(arrays)
    arrays = list(arrays)
    size = sum(a.size for a in arrays)
    if size <= svd_max_elements:
        return pca.fit(np.concatenate(arrays))
    return pca.fit_accumulator(accumulate(arrays, dtype, pca.chunk_size), consume=True)


def _score_chunks(pca: PCA, arrays: Iterable[np.ndarray], progress: bool | None = False, total: int | None = None):
    """Q, T² and scores of stacked per-frame arrays, without stacking them all at once."""
    qs, ts, ss = [], [], []
    chunks = _rechunk(arrays, min(pca.chunk_size, _STREAM_ROWS))  # small host/device copies per step
    for c in _progress(chunks, total, "Q and T²", progress, unit="atom", weight=len):
        q, t = pca.q_and_t2(c)
        qs.append(q)
        ts.append(t)
        ss.append(pca.transform(c))
    if not qs:
        raise ValueError("no structures to score")
    return np.concatenate(qs), np.concatenate(ts), np.concatenate(ss)


@dataclass
class QResFit:
    """A fitted Q-residual model: the PCA (with metadata), training Q and the per-element limits."""

    pca: PCA
    limits: ElementLimits
    q_train: np.ndarray
    numbers: np.ndarray
    frame_sizes: np.ndarray
    scores: np.ndarray


def finish_fit(pca: PCA, arrays: Iterable[np.ndarray], frames: Sequence[Atoms], descriptor, n_sigma: float = 2.0,
               sources: Sequence[str] = (), progress: bool | None = False) -> QResFit:
    """Training Q and T², per-element limits, and the metadata a saved PCA needs to score new frames.

    ``arrays``: the per-frame descriptors (a list, or an iterable such as a fresh stream)."""
    q, t2, scores = _score_chunks(pca, arrays, progress, sum(len(a) for a in frames))
    numbers = np.concatenate([a.get_atomic_numbers() for a in frames])
    sizes = np.asarray([len(a) for a in frames])
    limits = ElementLimits.from_values(q, numbers, n_sigma)
    pca.metadata.update(
        {
            "descriptor": descriptor.settings(),
            "element_limits": limits.to_dict(),
            "q_limit_jackson_mudholkar_95": pca.q_limit(0.95),
            "t2_limit_95": pca.t2_limit(0.95),
            "train": {"sources": list(sources), "n_frames": int(len(sizes)), "n_atoms": int(sizes.sum())},
        }
    )
    pca.extra_arrays = {"train_scores": scores, "train_q": q, "train_t2": t2, "train_numbers": numbers, "train_frame_sizes": sizes}
    return QResFit(pca=pca, limits=limits, q_train=q, numbers=numbers, frame_sizes=sizes, scores=scores)


def fit_qres(descriptor, frames: Sequence[Atoms], n_components=5, scale: bool = False, n_sigma: float = 2.0,
             dtype: str = "float64", progress: bool | None = False, sources: Sequence[str] = (),
             keep_bytes: int = 1 << 30, svd_max_elements: int = 20_000_000, **kwargs) -> QResFit:
    """Descriptors of ``frames`` -> PCA -> training Q, T², per-element ``mean + n_sigma std`` limits.

    Small problems (at most ``svd_max_elements`` descriptor entries) are fitted by exact SVD
    of the stacked matrix.  Larger ones are streamed: frames -> descriptors -> covariance
    accumulator, so the stacked matrix is never formed; the per-frame descriptors are kept
    for the training Q when they take at most ``keep_bytes`` (float64), else computed again.
    ``progress``: bars with rate and ETA (True, False, or None: only on a terminal).
    """
    frames = list(frames)
    n_rows = sum(len(a) for a in frames)
    stream = (np.asarray(x, dtype=np.float64) for x in descriptor.compute_iter(frames))
    stream = _progress(stream, len(frames), "descriptors", progress)
    first = next(stream, None)
    if first is None or n_rows < 2:
        raise ValueError("PCA needs at least 2 atoms in the training frames")
    n_features = first.shape[1]
    if n_rows * n_features <= svd_max_elements:
        arrays = [first, *stream]
        pca = fit_pca(arrays, n_components, scale=scale, dtype=dtype, svd_max_elements=svd_max_elements,
                      progress=progress, **kwargs)
        return finish_fit(pca, arrays, frames, descriptor, n_sigma, sources, progress)
    keep = n_rows * n_features * 8 <= keep_bytes
    kept: list[np.ndarray] = []
    pca = PCA(n_components, scale=scale, dtype=dtype, svd_max_elements=svd_max_elements, progress=progress, **kwargs)

    def tee():
        for a in itertools.chain([first], stream):
            if keep:
                kept.append(a)
            yield a

    acc = accumulate(tee(), dtype, chunk_rows=min(pca.chunk_size, _STREAM_ROWS))
    pca.fit_accumulator(acc, consume=True)
    del acc
    if keep:
        arrays: Iterable[np.ndarray] = kept
    else:  # a second pass costs descriptor time, but never holds the whole matrix
        arrays = (np.asarray(x, dtype=np.float64) for x in descriptor.compute_iter(frames))
    return finish_fit(pca, arrays, frames, descriptor, n_sigma, sources, progress)


def score_frames_multi(pcas: dict, descriptor, frames: Sequence[Atoms], progress: bool | None = False,
                       label: str = "scoring") -> dict:
    """``{name: score_frames(pca, descriptor, frames)}`` for several PCAs from one descriptor pass
    (streamed: no frame's descriptors are kept)."""
    frames = list(frames)
    if not pcas:
        return {}
    stream = (np.asarray(x, dtype=np.float64) for x in descriptor.compute_iter(frames))
    parts: dict = {k: ([], [], []) for k in pcas}
    first = next(iter(pcas.values()))
    for c in _rechunk(_progress(stream, len(frames), label, progress), min(first.chunk_size, _STREAM_ROWS)):
        for k, p in pcas.items():
            q, t = p.q_and_t2(c)
            parts[k][0].append(q)
            parts[k][1].append(t)
            parts[k][2].append(p.transform(c))
    sizes = np.asarray([len(a) for a in frames])
    numbers = np.concatenate([a.get_atomic_numbers() for a in frames])
    out = {}
    for k, (qs, ts, ss) in parts.items():
        if not qs:
            raise ValueError("no structures to score")
        out[k] = {"q": np.concatenate(qs), "t2": np.concatenate(ts), "scores": np.concatenate(ss),
                  "numbers": numbers, "frame_sizes": sizes, "frame": frame_index(sizes)}
    return out


def score_arrays(pca: PCA, arrays: Iterable[np.ndarray], frames: Sequence[Atoms]) -> dict:
    """Per-atom ``q``, ``t2``, ``scores`` plus ``numbers``, ``frame_sizes``, ``frame`` for precomputed descriptors."""
    q, t2, scores = _score_chunks(pca, arrays)
    sizes = np.asarray([len(a) for a in frames])
    if sizes.sum() != len(q):
        raise ValueError(f"{len(q)} descriptor rows for {sizes.sum()} atoms")
    return {
        "q": q,
        "t2": t2,
        "scores": scores,
        "numbers": np.concatenate([a.get_atomic_numbers() for a in frames]),
        "frame_sizes": sizes,
        "frame": frame_index(sizes),
    }


def score_frames(pca: PCA, descriptor, frames: Sequence[Atoms], progress: bool | None = False) -> dict:
    """Descriptors of ``frames`` scored under ``pca`` (see :func:`score_arrays`), streamed frame by frame
    (``progress``: a bar with rate and ETA; None: only on a terminal)."""
    frames = list(frames)
    stream = (np.asarray(x, dtype=np.float64) for x in descriptor.compute_iter(frames))
    return score_arrays(pca, _progress(stream, len(frames), "scoring", progress), frames)


def element_table(result: dict, limits: ElementLimits | None = None) -> dict:
    """Per element: mean, std, max, median, count of Q, and the fraction of atoms above the limit."""
    table = per_element(result["q"], result["numbers"])
    if limits is not None:
        for s, row in table.items():
            lim = limits.limit.get(s)
            sel = result["numbers"] == _z(s)
            row["limit"] = lim if lim is not None else float("nan")
            row["fraction_over"] = float(np.mean(result["q"][sel] > lim)) if lim is not None else float("nan")
    return table


def frame_table(result: dict, limits: ElementLimits | None = None) -> dict:
    """Per frame: mean and max Q, and (with limits) the max ratio Q/limit and the flag."""
    sizes = result["frame_sizes"]
    out = {"mean_q": per_structure(result["q"], sizes, "mean"), "max_q": per_structure(result["q"], sizes, "max")}
    if limits is not None:
        from ase.data import chemical_symbols

        lim = np.asarray([limits.limit.get(chemical_symbols[int(z)], np.inf) for z in result["numbers"]])
        ratio = result["q"] / lim
        out["max_ratio"] = per_structure(ratio, sizes, "max")
        out["flag"] = out["max_ratio"] > 1.0
    return out


def file_table(result: dict, frames_per_file: Sequence[int], names: Sequence[str], limits: ElementLimits | None = None,
               q_limit: float | None = None) -> list[dict]:
    """Per input file: frames, atoms, mean/max Q, fractions over the limits, frames flagged, and its element table.

    ``frames_per_file``: how many of ``result``'s frames came from each file, in order."""
    sizes = np.asarray(result["frame_sizes"])
    if sum(frames_per_file) != len(sizes) or len(names) != len(frames_per_file):
        raise ValueError(f"{sum(frames_per_file)} frames in {len(names)} file(s) for a result of {len(sizes)} frames")
    ftab = frame_table(result, limits)
    rows, f0, a0 = [], 0, 0
    for name, nf in zip(names, frames_per_file):
        na = int(sizes[f0 : f0 + nf].sum())
        part = {k: np.asarray(result[k])[a0 : a0 + na] for k in ("q", "t2", "numbers")}
        part["frame_sizes"] = sizes[f0 : f0 + nf]
        row = {"file": str(name), "n_frames": int(nf), "n_atoms": na,
               "mean_q": float(np.mean(part["q"])) if na else float("nan"),
               "max_q": float(np.max(part["q"])) if na else float("nan")}
        if q_limit is not None:
            row["fraction_atoms_over_q_limit_jm95"] = float(np.mean(part["q"] > q_limit)) if na else float("nan")
        if "flag" in ftab:
            lim = np.asarray([limits.limit.get(_symbol(z), np.inf) for z in part["numbers"]])
            row["fraction_atoms_over_element_limit"] = float(np.mean(part["q"] > lim)) if na else float("nan")
            row["frames_flagged"] = int(np.sum(ftab["flag"][f0 : f0 + nf]))
        row["per_element"] = element_table(part, limits) if na else {}
        rows.append(row)
        f0, a0 = f0 + nf, a0 + na
    return rows


def format_file_table(rows: list[dict], title: str = "") -> str:
    """A fixed-width text table of :func:`file_table`'s rows (file names shortened from the left)."""
    flagged = any("frames_flagged" in r for r in rows)
    width = min(max([4] + [len(r["file"]) for r in rows]), 40)
    head = f"{'file':<{width}} {'frames':>7} {'atoms':>8} {'mean Q':>12} {'max Q':>12}"
    if flagged:
        head += f" {'>limit':>7} {'flagged':>8}"
    lines = ([title] if title else []) + [head]
    for r in rows:
        name = r["file"] if len(r["file"]) <= width else "..." + r["file"][-(width - 3):]
        line = f"{name:<{width}} {r['n_frames']:>7d} {r['n_atoms']:>8d} {r['mean_q']:>12.5g} {r['max_q']:>12.5g}"
        if flagged:
            line += f" {100 * r['fraction_atoms_over_element_limit']:>6.1f}% {r['frames_flagged']:>8d}"
        lines.append(line)
    return "\n".join(lines)


def _symbol(z) -> str:
    from ase.data import chemical_symbols

    return chemical_symbols[int(z)]


def _z(symbol: str) -> int:
    from ase.data import atomic_numbers

    return atomic_numbers[symbol]


def format_element_table(table: dict, title: str = "") -> str:
    """A fixed-width text table of :func:`element_table`'s result."""
    has_lim = any("limit" in r for r in table.values())
    head = f"{'element':>7} {'count':>7} {'mean Q':>12} {'std Q':>12} {'max Q':>12}"
    if has_lim:
        head += f" {'limit':>12} {'>limit':>7}"
    lines = ([title] if title else []) + [head]
    for s, r in table.items():
        line = f"{s:>7} {r['count']:>7d} {r['mean']:>12.5g} {r['std']:>12.5g} {r['max']:>12.5g}"
        if has_lim:
            line += f" {r.get('limit', float('nan')):>12.5g} {100 * r.get('fraction_over', float('nan')):>6.1f}%"
        lines.append(line)
    return "\n".join(lines)
