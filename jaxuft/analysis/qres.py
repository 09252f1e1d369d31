"""Q-residuals on many files with bounded memory: per-file descriptor cache on disk, a streamed PCA, per-element tables.

    store = DescriptorStore(soap_descriptor(species), "out/cache")
    n50 = store.get("train/naive/N-50.xyz")                   # computed once, then memory-mapped
    pca = fit_streamed_pca([n50], n_components=5)             # passes over the cache, O(n f k) each
    q = pca.q_residual_of(n50)                                # (n_atoms,)
    limits = element_limits(q, n50.numbers)                   # jaxuft.uq: mean + 2 std per element
    table = element_q_table(pca.q_residual_of(other), other.numbers, limits)

The PCA is block subspace iteration on the covariance applied implicitly,
``C V = X_c^T (X_c V) / (n - 1)``, one pass over the cached rows per iteration, so the
``n_features²`` covariance (1 GB for the paper's 11 172 SOAP features) is never formed;
converged eigenpairs equal an exact PCA's (tests compare with ``jaxuft.uq.PCA``).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from ase import Atoms

from ..fileio import atomic_save_npz
from ..progress import get_logger, progress

__all__ = ["DescriptorStore", "CachedDescriptors", "StreamedPCA", "fit_streamed_pca", "element_q_table",
           "fraction_over"]

log = get_logger(__name__)


@dataclass
class CachedDescriptors:
    """Per-atom descriptors of the frames of one file: ``array (n_atoms, n_features)`` (memory-mapped),
    ``frame_sizes``, ``numbers`` (atomic numbers, stacked), ``thermo_rows`` (-1 where unknown)."""

    array: np.ndarray
    frame_sizes: np.ndarray
    numbers: np.ndarray
    thermo_rows: np.ndarray
    label: str = ""

    @property
    def n_frames(self) -> int:
        return int(len(self.frame_sizes))

    def frames(self) -> Iterator[np.ndarray]:
        """One float64 ``(n_atoms_k, n_features)`` array per frame."""
        start = 0
        for n in self.frame_sizes:
            yield np.asarray(self.array[start : start + n], dtype=np.float64)
            start += int(n)

    def chunks(self, rows: int = 1024) -> Iterator[np.ndarray]:
        for i in range(0, len(self.array), rows):
            yield np.asarray(self.array[i : i + rows], dtype=np.float64)


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class DescriptorStore:
    """Descriptors per structure file, computed once and kept in ``directory`` as ``.npy``.

    ``descriptor``: anything with ``compute_iter(frames)`` and ``settings()`` (a
    :class:`jaxuft.uq.SOAP`, a :class:`jaxuft.uq.ModelDescriptor`); ``dtype``: storage dtype
    ("float32" halves the disk and read cost; the PCA and Q arithmetic is float64 either way).
    A cache entry is keyed by the file's content hash, the frames used and the descriptor
    settings, so a changed file or setting is recomputed, never reused.
    """

    def __init__(self, descriptor, directory: str | os.PathLike, dtype: str = "float32", show_progress: bool | None = None):
        if dtype not in ("float32", "float64"):
            raise ValueError(f"cache dtype must be 'float32' or 'float64', got {dtype!r}")
        self.descriptor = descriptor
        self.directory = Path(directory)
        self.dtype = np.dtype(dtype)
        self.show_progress = show_progress
        self.directory.mkdir(parents=True, exist_ok=True)

    def _key(self, path: Path, n_frames: int | None) -> str:
        blob = json.dumps({"file": _file_digest(path), "frames": n_frames, "descriptor": self.descriptor.settings(),
                           "dtype": self.dtype.name}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:20]

    def get(self, path: str | os.PathLike, max_frames: int | None = None, label: str | None = None,
            frames: Sequence[Atoms] | None = None) -> CachedDescriptors:
        """The cached descriptors of the first ``max_frames`` frames of ``path`` (all by default),
        computing and storing them first when absent.  ``frames``: the already read frames of ``path``."""
        path = Path(path)
        label = label or path.stem
        key = self._key(path, max_frames)
        base = self.directory / f"{path.parent.name}-{path.stem}-{key}"
        arr_path, meta_path = base.with_suffix(".npy"), base.with_suffix(".meta.npz")
        if arr_path.exists() and meta_path.exists():
            return self._open(arr_path, meta_path, label)
        if frames is None:
            from .io import read_frames

            frames = read_frames(path)
        frames = list(frames)[:max_frames] if max_frames else list(frames)
        if not frames:
            raise ValueError(f"{path} holds no frames")
        sizes = np.array([len(a) for a in frames])
        n_feat = None
        tmp = arr_path.with_name(arr_path.name + f".tmp{os.getpid()}")
        out = None
        try:
            start = 0
            with progress(total=len(frames), desc=f"descriptors {label}", unit="frame", enabled=self.show_progress) as bar:
                for x in self.descriptor.compute_iter(frames):
                    x = np.asarray(x)
                    if out is None:
                        n_feat = x.shape[1]
                        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=self.dtype, shape=(int(sizes.sum()), n_feat))
                    out[start : start + len(x)] = x
                    start += len(x)
                    bar.update(1)
            out.flush()
            del out
            os.replace(tmp, arr_path)
        finally:
            if tmp.exists():
                tmp.unlink()
        rows = np.array([int(a.info.get("thermo_row", -1)) for a in frames])
        atomic_save_npz(meta_path, frame_sizes=sizes, numbers=np.concatenate([a.numbers for a in frames]),
                        thermo_rows=rows)
        log.info("cached %d×%d descriptors of %s (%d frames) in %s", int(sizes.sum()), n_feat, path.name, len(frames), arr_path)
        return self._open(arr_path, meta_path, label)

    @staticmethod
    def _open(arr_path: Path, meta_path: Path, label: str) -> CachedDescriptors:
        with np.load(meta_path) as z:
            meta = {k: z[k] for k in z.files}
        return CachedDescriptors(np.load(arr_path, mmap_mode="r"), meta["frame_sizes"], meta["numbers"],
                                 meta["thermo_rows"], label)


def _as_chunks(source, rows: int) -> Iterator[np.ndarray]:
    if isinstance(source, CachedDescriptors):
        yield from source.chunks(rows)
    else:
        a = np.asarray(source)
        if a.ndim != 2:
            raise ValueError(f"descriptor arrays must be 2-D (n_atoms, n_features), got shape {a.shape}")
        for i in range(0, len(a), rows):
            yield np.asarray(a[i : i + rows], dtype=np.float64)


@dataclass
class StreamedPCA:
    """A fitted PCA (scikit-learn names; centred, unscaled): ``mean_ (F,)``, ``components_ (k, F)``
    (orthonormal rows, largest-|.| entry positive), ``explained_variance_`` (``n - 1``),
    ``explained_variance_ratio_``, ``total_variance_``, ``n_samples_``; ``n_iter_`` and
    ``eigen_residual_`` (max ``|C v - λ v| / λ_1`` of the kept pairs) describe convergence."""

    mean_: np.ndarray
    components_: np.ndarray
    explained_variance_: np.ndarray
    explained_variance_ratio_: np.ndarray
    total_variance_: float
    n_samples_: int
    n_iter_: int = 0
    eigen_residual_: float = float("nan")
    metadata: dict = field(default_factory=dict)

    @property
    def n_components_(self) -> int:
        return int(len(self.components_))

    def transform(self, X) -> np.ndarray:
        return (np.asarray(X, np.float64) - self.mean_) @ self.components_.T

    def q_residual(self, X) -> np.ndarray:
        """Squared reconstruction error ``|x_c - x_c P^T P|²`` of every row ``(n,)``."""
        xc = np.asarray(X, np.float64) - self.mean_
        r = xc - (xc @ self.components_.T) @ self.components_
        return np.einsum("ij,ij->i", r, r)

    def q_residual_of(self, source, rows: int = 1024) -> np.ndarray:
        """Q of every row of a :class:`CachedDescriptors` (or array), streamed."""
        parts = [self.q_residual(c) for c in _as_chunks(source, rows)]
        return np.concatenate(parts) if parts else np.zeros(0)

    def scores_of(self, source, rows: int = 1024) -> np.ndarray:
        parts = [self.transform(c) for c in _as_chunks(source, rows)]
        return np.concatenate(parts) if parts else np.zeros((0, self.n_components_))

    def state(self):
        """The arrays as a :class:`jaxuft.uq.PCAState` (for ``jaxuft.uq.q_residual_fn`` in compiled code)."""
        from ..uq import PCAState

        return PCAState(mean=self.mean_, scale=np.ones_like(self.mean_), components=self.components_,
                        variance=self.explained_variance_)


def fit_streamed_pca(sources: Sequence, n_components: int = 5, n_oversample: int = 10, tol: float = 1e-9,
                     max_iter: int = 300, chunk_rows: int = 1024, seed: int = 0, show_progress: bool | None = None) -> StreamedPCA:
    """PCA of the rows of all ``sources`` together (each a :class:`CachedDescriptors` or a 2-D array).

    One pass for the mean and total variance, then block subspace iteration with
    ``n_components + n_oversample`` vectors and Rayleigh–Ritz until the kept pairs'
    residuals fall below ``tol * λ_1`` (float64 throughout).  Peak memory: one chunk of
    ``chunk_rows`` rows plus ``n_features × (k + oversample)`` blocks.
    """
    sources = list(sources)
    if not sources:
        raise ValueError("no descriptors to fit a PCA on")
    k = int(n_components)
    if k < 1:
        raise ValueError(f"n_components must be positive, got {n_components}")

    def chunks():
        for s in sources:
            yield from _as_chunks(s, chunk_rows)

    n, shift, s1, ss = 0, None, None, 0.0
    for c in chunks():
        if shift is None:
            shift = c.mean(axis=0)
            s1 = np.zeros_like(shift)
        elif c.shape[1] != len(shift):
            raise ValueError(f"descriptor arrays disagree on n_features: {c.shape[1]} vs {len(shift)}")
        d = c - shift
        s1 += d.sum(axis=0)
        ss += float(np.einsum("ij,ij->", d, d))
        n += len(c)
    if n < 2:
        raise ValueError(f"a PCA needs at least 2 samples, got {n}")
    f = len(shift)
    mean = shift + s1 / n
    total_var = (ss - float(s1 @ s1) / n) / (n - 1)
    m = min(k + int(n_oversample), f, n - 1)
    if k > m:
        raise ValueError(f"n_components={k} must be below the number of samples ({n}) and features ({f})")
    V, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((f, m)))
    worst = np.inf
    with progress(total=None, desc="PCA subspace iteration", unit="pass", enabled=show_progress) as bar:
        for it in range(1, max_iter + 1):
            W = np.zeros((f, m))
            ysum = np.zeros(m)
            mv = mean @ V
            for c in chunks():
                Y = c @ V - mv
                W += c.T @ Y
                ysum += Y.sum(axis=0)
            W -= np.outer(mean, ysum)
            W /= n - 1
            H = V.T @ W
            w, U = np.linalg.eigh(0.5 * (H + H.T))
            w, U = w[::-1], U[:, ::-1]
            ritz, CW = V @ U, W @ U
            resid = np.linalg.norm(CW - ritz * w, axis=0)
            worst = float(np.max(resid[:k]) / max(abs(w[0]), 1e-300))
            bar.update(1)
            bar.set_postfix(residual=f"{worst:.1e}")
            if worst < tol:
                break
            V, _ = np.linalg.qr(CW)
    comps = ritz[:, :k].T.copy()
    idx = np.argmax(np.abs(comps), axis=1)
    comps *= np.where(comps[np.arange(k), idx] < 0, -1.0, 1.0)[:, None]
    ev = np.clip(w[:k], 0.0, None)
    if worst >= tol:
        log.warning("streamed PCA stopped after %d passes with relative residual %.2e (tol %.0e)", max_iter, worst, tol)
    return StreamedPCA(mean_=mean, components_=comps, explained_variance_=ev,
                       explained_variance_ratio_=ev / total_var if total_var > 0 else np.zeros_like(ev),
                       total_variance_=float(total_var), n_samples_=int(n), n_iter_=it, eigen_residual_=worst)


def element_q_table(q, numbers, limits=None) -> dict:
    """Per element: count, mean, std, median, max of Q, and with ``limits`` (a :class:`jaxuft.uq.ElementLimits`)
    the limit and the fraction of atoms above it."""
    from ..uq.analysis import element_table

    return element_table({"q": np.asarray(q, np.float64), "numbers": np.asarray(numbers)}, limits)


def fraction_over(q, numbers, limits) -> float:
    """Fraction of all atoms whose Q exceeds their element's limit (elements without a limit count as over)."""
    lim = limits.array(np.asarray(numbers), missing=-np.inf)
    return float(np.mean(np.asarray(q) > lim))
