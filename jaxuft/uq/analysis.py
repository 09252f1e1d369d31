"""The Q-residual workflow on lists of structures: descriptors -> PCA -> per-atom Q, T² -> tables.

Used by ``jaxuft qres`` and ``examples/paper_qresidual.py``::

    desc = soap_descriptor(species_of(train))            # or ModelDescriptor("sevennet-0")
    fit = fit_qres(desc, train, n_components=5)          # PCA + training Q + per-element limits
    res = score_frames(fit.pca, desc, frames)            # per-atom q, t2, numbers, scores
    table = element_table(res, fit.limits)               # per-element mean/std/max/fraction over limit
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
from ase import Atoms

from .aggregate import frame_index, per_element, per_structure
from .limits import ElementLimits
from .pca import PCA, CovarianceAccumulator


def _progress(it, total, desc, enabled):
    if not enabled:
        return it
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        return it
    return tqdm(it, total=total, desc=desc, unit="frame", leave=False)


def descriptors_per_frame(descriptor, frames: Sequence[Atoms], progress: bool = False, label: str = "descriptors") -> list[np.ndarray]:
    """One host array ``(n_atoms_k, n_features)`` per frame."""
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


def fit_pca(
    arrays: Sequence[np.ndarray] | CovarianceAccumulator,
    n_components=5,
    scale: bool = False,
    dtype: str = "float64",
    svd_max_elements: int = 20_000_000,
    **kwargs,
) -> PCA:
    """Fit a PCA on stacked per-frame arrays: exact SVD when small, streamed covariance otherwise."""
    pca = PCA(n_components, scale=scale, dtype=dtype, svd_max_elements=svd_max_elements, **kwargs)
    if isinstance(arrays, CovarianceAccumulator):
        return pca.fit_accumulator(arrays)
    arrays = list(arrays)
    size = sum(a.size for a in arrays)
    if size <= svd_max_elements:
        return pca.fit(np.concatenate(arrays))
    return pca.fit_accumulator(accumulate(arrays, dtype, pca.chunk_size))


def _score_chunks(pca: PCA, arrays: Iterable[np.ndarray]):
    """Q, T² and scores of stacked per-frame arrays, without stacking them all at once."""
    qs, ts, ss = [], [], []
    for c in _rechunk(arrays, pca.chunk_size):
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


def finish_fit(pca: PCA, arrays: Sequence[np.ndarray], frames: Sequence[Atoms], descriptor, n_sigma: float = 2.0,
               sources: Sequence[str] = ()) -> QResFit:
    """Training Q and T², per-element limits, and the metadata a saved PCA needs to score new frames."""
    q, t2, scores = _score_chunks(pca, arrays)
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
             dtype: str = "float64", progress: bool = False, sources: Sequence[str] = (), **kwargs) -> QResFit:
    """Descriptors of ``frames`` -> PCA -> training Q, T², per-element ``mean + n_sigma std`` limits."""
    frames = list(frames)
    arrays = descriptors_per_frame(descriptor, frames, progress)
    pca = fit_pca(arrays, n_components, scale=scale, dtype=dtype, **kwargs)
    return finish_fit(pca, arrays, frames, descriptor, n_sigma, sources)


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


def score_frames(pca: PCA, descriptor, frames: Sequence[Atoms], progress: bool = False) -> dict:
    """Descriptors of ``frames`` scored under ``pca`` (see :func:`score_arrays`), streamed frame by frame."""
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
