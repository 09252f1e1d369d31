"""Principal component analysis on device, with scikit-learn's names, Q-residuals and Hotelling's T².

``PCA(n_components).fit(X)`` learns from per-atom descriptors ``X (n_samples, n_features)``:

* ``method="svd"``: thin SVD of the centred (optionally scaled) matrix, as
  ``sklearn.decomposition.PCA(svd_solver="full")``;
* ``method="covariance"``: streams ``X`` in chunks (:mod:`jaxuft.uq.covariance`) (an array, or any iterable of
  ``(n_i, n_features)`` chunks such as a generator of per-frame descriptors),
  accumulates the shifted sums and ``X^T X`` on device, and eigendecomposes the
  covariance: full ``eigh`` up to ``eigh_max`` features, otherwise the leading
  eigenpairs by block subspace iteration (Rayleigh–Ritz) with the residual
  spectrum's moments from the trace and Frobenius norm (see ``residual_moments_``);
* ``method="auto"``: "svd" for in-memory arrays up to ``svd_max_elements`` entries,
  else "covariance".

Conventions follow scikit-learn: ``explained_variance_`` uses ``n - 1``; each
component's largest-magnitude entry is positive (``svd_flip(u_based_decision=False)``);
a float ``0 < n_components < 1`` keeps the fewest components whose cumulative
explained-variance ratio exceeds it.  ``scale=True`` divides centred features by
their standard deviation (``ddof=0``, like ``StandardScaler``; constant features
keep scale 1).

Per-sample scores (``(n_samples,)``, in the centred/scaled feature space):
``q_residual(X) = |x_c - x_c P^T P|^2`` and ``t2(X) = sum_a t_a^2 / lambda_a``.
Pure-JAX versions for compiled code: :func:`pca_state`, :func:`q_residual_fn`,
:func:`t2_fn`, :func:`transform_fn`.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Iterable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .covariance import CovarianceAccumulator, CovarianceOperator, leading_eigenpairs

FORMAT = "jaxuft-pca"
FORMAT_VERSION = 1


class PCAState(NamedTuple):
    """The arrays a fitted PCA needs to score new samples (a JAX pytree).

    mean:       (n_features,)
    scale:      (n_features,) divisor applied after centring (ones when unscaled)
    components: (n_components, n_features), orthonormal rows
    variance:   (n_components,) explained variance of each component
    """

    mean: jax.Array
    scale: jax.Array
    components: jax.Array
    variance: jax.Array


def _centred(state: PCAState, X):
    return (X - state.mean) / state.scale


def transform_fn(state: PCAState, X: jax.Array) -> jax.Array:
    """Scores ``(n, n_components)`` (pure)."""
    return _centred(state, X) @ state.components.T


def q_residual_fn(state: PCAState, X: jax.Array) -> jax.Array:
    """Squared reconstruction error per sample ``(n,)`` (pure)."""
    xc = _centred(state, X)
    resid = xc - (xc @ state.components.T) @ state.components
    return jnp.sum(resid * resid, axis=-1)


def t2_fn(state: PCAState, X: jax.Array) -> jax.Array:
    """Hotelling's T² per sample ``(n,)`` (pure)."""
    t = transform_fn(state, X)
    return jnp.sum(t * t / state.variance, axis=-1)


@jax.jit
def _q_t2(state: PCAState, X):
    return q_residual_fn(state, X), t2_fn(state, X)


_transform_jit = jax.jit(transform_fn)
_q_jit = jax.jit(q_residual_fn)
_t2_jit = jax.jit(t2_fn)


@functools.partial(jax.jit, donate_argnums=(0,))
def _rescale(cov, scale):  # cov is always a fresh array owned by the fit: reuse its buffer
    return cov / jnp.outer(scale, scale)


@jax.jit
def _diag(cov):  # jitted: eager jnp.diag/trace materialise an F x F temporary
    return jnp.diagonal(cov)


@jax.jit
def _frob2(cov):
    return jnp.sum(cov * cov)


def _flip_signs(components: np.ndarray) -> np.ndarray:
    """Make the largest-|.| entry of every row positive (scikit-learn's convention)."""
    idx = np.argmax(np.abs(components), axis=1)
    signs = np.sign(components[np.arange(len(components)), idx])
    signs[signs == 0] = 1.0
    return components * signs[:, None]


def _is_array(X) -> bool:
    """A 2-D array-like (not an iterable of chunks)."""
    if isinstance(X, (np.ndarray, jax.Array)):
        return True
    if isinstance(X, (list, tuple)):  # rows (sklearn style) or a list of 2-D chunks
        return len(X) > 0 and np.ndim(X[0]) == 1
    return hasattr(X, "__array__") and not hasattr(X, "__next__")


class PCA:
    """PCA with scikit-learn's interface, computed with JAX; adds Q-residuals, T² and their limits.

    n_components: int, float in (0, 1) (variance target) or None (all).
    scale: standardise features after centring.
    dtype: "float64" (default; parity with scikit-learn) or "float32".
    method: "auto", "svd" or "covariance" (see the module docstring).
    chunk_size: rows per device step when streaming an in-memory array.
    eigh_max: largest feature count eigendecomposed in full on the covariance path.
    n_eig: eigenpairs computed by subspace iteration above ``eigh_max`` (default
        ``max(2 k + 16, 64)``).
    progress: progress bars with rate and ETA for the streamed accumulation and the
        subspace iteration (True, False, or None: only on a terminal; see :mod:`jaxuft.progress`).
    """

    def __init__(
        self,
        n_components=None,
        *,
        scale: bool = False,
        dtype: str = "float64",
        method: str = "auto",
        chunk_size: int = 4096,
        eigh_max: int = 4096,
        n_eig: int | None = None,
        svd_max_elements: int = 20_000_000,
        tol: float = 1e-10,
        max_iter: int = 500,
        seed: int = 0,
        progress: bool | None = False,
    ):
        from ..potential import resolve_dtype

        if method not in ("auto", "svd", "covariance"):
            raise ValueError(f"method must be 'auto', 'svd' or 'covariance', got {method!r}")
        if n_components is not None:
            if isinstance(n_components, float) and not float(n_components).is_integer():
                if not 0.0 < n_components < 1.0:
                    raise ValueError(f"a float n_components is a variance target in (0, 1), got {n_components}")
            elif int(n_components) < 1:
                raise ValueError(f"n_components must be positive, got {n_components}")
        self.n_components = n_components
        self.scale = bool(scale)
        self.dtype = resolve_dtype(dtype)
        self.method = method
        self.chunk_size = int(chunk_size)
        self.eigh_max = int(eigh_max)
        self.n_eig = n_eig
        self.svd_max_elements = int(svd_max_elements)
        self.tol = float(tol)
        self.max_iter = int(max_iter)
        self.seed = int(seed)
        self.progress = progress
        self.metadata: dict = {}

    # ---- fitting --------------------------------------------------------------------
    def fit(self, X, y=None) -> "PCA":
        """Fit on ``X``: an ``(n_samples, n_features)`` array (or list of rows), or an iterable
        (list, generator) of 2-D chunks ``(n_i, n_features)``, which is streamed."""
        method, n_rows = self.method, None
        if _is_array(X):
            X = np.asarray(X)
            if X.ndim != 2:
                raise ValueError(f"X must be 2-D (n_samples, n_features), got shape {X.shape}")
            if method == "auto":
                method = "svd" if X.size <= self.svd_max_elements else "covariance"
            if method == "covariance":
                arr, cs, n_rows = X, self.chunk_size, len(X)
                X = (arr[i : i + cs] for i in range(0, len(arr), cs))
        elif method == "svd":
            X = np.concatenate([np.asarray(c) for c in X], axis=0)
        else:
            method = "covariance"
        if method == "svd":
            self._fit_svd(X)
        else:
            self._fit_covariance(X, n_rows)
        self.fit_method_ = method
        return self

    def fit_transform(self, X, y=None) -> np.ndarray:
        """Fit on the array ``X`` and return its scores."""
        X = np.asarray(X)
        return self.fit(X).transform(X)

    def _n_keep(self, ratio: np.ndarray, n_max: int) -> int:
        nc = self.n_components
        if nc is None:
            return n_max
        if isinstance(nc, float) and not float(nc).is_integer():
            return int(min(np.searchsorted(np.cumsum(ratio), nc, side="right") + 1, n_max))
        if int(nc) > n_max:
            raise ValueError(
                f"n_components={nc} must be at most min(n_samples, n_features)={n_max} for this data"
            )
        return int(nc)

    def _fit_svd(self, X: np.ndarray) -> None:
        n, f = X.shape
        if n < 2:
            raise ValueError("PCA needs at least 2 samples")
        Xd = jnp.asarray(X, dtype=self.dtype)
        mean = jnp.mean(Xd, axis=0)
        Xc = Xd - mean
        if self.scale:
            std = jnp.sqrt(jnp.mean(Xc * Xc, axis=0))
            scale = jnp.where(std > 0, std, 1.0)
            Xc = Xc / scale
        else:
            scale = jnp.ones((f,), self.dtype)
        _, S, Vt = jnp.linalg.svd(Xc, full_matrices=False)
        S = np.asarray(S, dtype=np.float64)
        Vt = np.asarray(Vt, dtype=np.float64)
        ev_all = S**2 / (n - 1)
        self._finish(
            n, f, np.asarray(mean, np.float64), np.asarray(scale, np.float64), ev_all, Vt,
            total_var=float(ev_all.sum()), resid_moments=None, exact=True,
        )

    def _fit_covariance(self, chunks: Iterable, n_rows: int | None = None) -> None:
        from ..progress import progress

        acc = CovarianceAccumulator(self.dtype.name)
        with progress(total=n_rows, desc="PCA covariance", unit="row", enabled=self.progress, leave=False) as bar:
            for chunk in chunks:
                acc.update(chunk)
                bar.update(len(chunk))
        self._fit_moments(acc)

    def fit_accumulator(self, acc, consume: bool = False) -> "PCA":
        """Fit from already accumulated moments: one :class:`CovarianceAccumulator`, or a list of
        them (the PCA of their data sets together, as ``merge`` would give, without its copy).

        ``consume``: turn a single accumulator's ``F x F`` sum into the covariance in place
        (the accumulator cannot be used afterwards).  Otherwise, above ``eigh_max`` features,
        the accumulators are only read (:class:`~jaxuft.uq.covariance.CovarianceOperator`):
        no ``F x F`` array is made, so they can be fitted again alone or together."""
        accs = list(acc) if isinstance(acc, (list, tuple)) else [acc]
        if consume and len(accs) > 1:
            raise ValueError("consume=True needs a single accumulator (merge them first, or pass consume=False)")
        self._fit_moments(accs, consume)
        self.fit_method_ = "covariance"
        return self

    def _fit_moments(self, accs, consume: bool = True) -> None:
        if isinstance(accs, CovarianceAccumulator):
            accs = [accs]
        n = sum(a.n for a in accs)
        f = accs[0].n_features
        if n < 2:
            raise ValueError("PCA needs at least 2 samples")
        if f > self.eigh_max and not consume:  # read the sums in place: no F x F array
            op = CovarianceOperator(accs, self.dtype)
            mean = op.mean
            if self.scale:
                std = jnp.sqrt(jnp.clip(op.diagonal(), 0.0) * (n - 1) / n)
                scale = jnp.where(std > 0, std, 1.0)
                op = op.scaled(scale)
            else:
                scale = jnp.ones((f,), self.dtype)
            total_var = float(jnp.sum(op.diagonal()))
            w, Vt, resid = self._top_eigen(op, min(n, f), total_var)
            self._finish(
                n, f, np.asarray(mean, np.float64), np.asarray(scale, np.float64), w, Vt,
                total_var=total_var, resid_moments=resid, exact=False,
            )
            return
        acc = accs[0] if len(accs) == 1 else functools.reduce(CovarianceAccumulator.merge, accs)
        mean, cov = acc.mean_and_covariance(self.dtype, consume=consume)
        if self.scale:
            std = jnp.sqrt(jnp.clip(_diag(cov), 0.0) * (n - 1) / n)
            scale = jnp.where(std > 0, std, 1.0)
            cov = _rescale(cov, scale)
        else:
            scale = jnp.ones((f,), self.dtype)
        total_var = float(jnp.sum(_diag(cov)))
        n_max = min(n, f)
        if f <= self.eigh_max:
            w, V = jnp.linalg.eigh(cov)
            w = np.clip(np.asarray(w, np.float64)[::-1], 0.0, None)[:n_max]
            Vt = np.asarray(V, np.float64)[:, ::-1].T[:n_max]
            resid, exact = None, True
        else:
            w, Vt, resid = self._top_eigen(cov, n_max, total_var)
            exact = False
        self._finish(
            n, f, np.asarray(mean, np.float64), np.asarray(scale, np.float64), w, Vt,
            total_var=total_var, resid_moments=resid, exact=exact,
        )

    def _top_eigen(self, cov, n_max: int, total_var: float):
        """Leading eigenpairs by block subspace iteration; returns (w, Vt, tail moment estimates)."""
        nc = self.n_components
        k_req = 1 if nc is None or (isinstance(nc, float) and not float(nc).is_integer()) else int(nc)
        if nc is None or (isinstance(nc, float) and not float(nc).is_integer()):
            k_req = max(k_req, 32)
        m = self.n_eig or max(2 * k_req + 16, 64)
        m = min(m, n_max)
        check = min(k_req, m)
        w_np, ritz, self.n_iter_, self.eigen_residual_ = leading_eigenpairs(
            cov, m, check, tol=self.tol, max_iter=self.max_iter, seed=self.seed, progress=self.progress)
        w = np.clip(w_np, 0.0, None)
        Vt = np.asarray(ritz, np.float64).T
        frob2 = cov.frobenius2() if isinstance(cov, CovarianceOperator) else float(_frob2(cov))
        tail1 = max(total_var - w.sum(), 0.0)
        tail2 = max(frob2 - np.sum(w**2), 0.0)
        tail3 = tail2**2 / tail1 if tail1 > 0 else 0.0
        return w, Vt, (tail1, tail2, tail3)

    def _finish(self, n, f, mean, scale, ev_all, Vt, *, total_var, resid_moments, exact):
        n_max = min(n, f)
        ratio_all = ev_all / total_var if total_var > 0 else np.zeros_like(ev_all)
        k = self._n_keep(ratio_all, len(ev_all) if resid_moments is not None else n_max)
        if k > len(ev_all):
            raise ValueError(
                f"n_components={k} exceeds the {len(ev_all)} eigenpairs computed; raise n_eig or eigh_max"
            )
        comps = _flip_signs(Vt[:k])
        self.n_samples_ = int(n)
        self.n_features_in_ = int(f)
        self.n_components_ = int(k)
        self.mean_ = mean
        self.scale_ = scale if self.scale else None
        self._scale_arr = scale
        self.components_ = comps
        self.explained_variance_ = ev_all[:k].copy()
        self.explained_variance_ratio_ = ratio_all[:k].copy()
        self.singular_values_ = np.sqrt(self.explained_variance_ * (n - 1))
        self.total_variance_ = float(total_var)
        rest = ev_all[k:]
        if resid_moments is None:
            self.residual_moments_ = tuple(float(np.sum(rest**p)) for p in (1, 2, 3))
        else:
            t1, t2, t3 = resid_moments
            self.residual_moments_ = (
                float(np.sum(rest) + t1),
                float(np.sum(rest**2) + t2),
                float(np.sum(rest**3) + t3),
            )
        self.residual_moments_exact_ = bool(exact)
        self.residual_variance_ = rest.copy()
        n_rest = n_max - k
        self.noise_variance_ = float(self.residual_moments_[0] / n_rest) if n_rest > 0 else 0.0
        self._state = None

    # ---- scoring --------------------------------------------------------------------
    def _check(self):
        if not hasattr(self, "components_"):
            raise RuntimeError("this PCA is not fitted yet; call fit(X) first")

    def state(self, dtype=None) -> PCAState:
        """Device arrays for the pure functions (``q_residual_fn(state, X)`` etc.)."""
        self._check()
        dt = self.dtype if dtype is None else np.dtype(dtype)
        if self._state is None or self._state.mean.dtype != dt:
            self._state = PCAState(
                mean=jnp.asarray(self.mean_, dt),
                scale=jnp.asarray(self._scale_arr, dt),
                components=jnp.asarray(self.components_, dt),
                variance=jnp.asarray(self.explained_variance_, dt),
            )
        return self._state

    def _rows(self, X):
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X must have shape (n_samples, {self.n_features_in_}) like the training data, got {X.shape}"
            )
        return X

    def _batched(self, fn, X):
        """Apply a jitted ``fn(state, rows)`` in chunks padded to capacity buckets (few compilations)."""
        from ..graph import bucket_size

        X = self._rows(X)
        st = self.state()
        if len(X) == 0:
            out = fn(st, jnp.zeros((0, X.shape[1]), self.dtype))
            return jax.tree_util.tree_map(lambda o: np.asarray(o, np.float64), out)
        results = []
        for i in range(0, len(X), self.chunk_size):
            rows = X[i : i + self.chunk_size]
            m = len(rows)
            cap = m if m == self.chunk_size else min(bucket_size(m), self.chunk_size)
            if cap > m:
                rows = np.concatenate([rows, np.broadcast_to(self.mean_, (cap - m, rows.shape[1]))])
            out = fn(st, jnp.asarray(rows, self.dtype))
            results.append(jax.tree_util.tree_map(lambda o: np.asarray(o)[:m], out))
        return jax.tree_util.tree_map(lambda *xs: np.concatenate(xs).astype(np.float64), *results)

    def transform(self, X) -> np.ndarray:
        """Scores ``(n_samples, n_components_)``."""
        self._check()
        return self._batched(_transform_jit, X)

    def inverse_transform(self, T) -> np.ndarray:
        """Back to feature space ``(n_samples, n_features)``."""
        self._check()
        T = np.asarray(T, dtype=np.float64)
        return (T @ self.components_) * self._scale_arr + self.mean_

    def q_residual(self, X) -> np.ndarray:
        """Q-residual (squared reconstruction error) of every sample ``(n_samples,)``."""
        self._check()
        return self._batched(_q_jit, X)

    def t2(self, X) -> np.ndarray:
        """Hotelling's T² of every sample ``(n_samples,)``."""
        self._check()
        return self._batched(_t2_jit, X)

    def q_and_t2(self, X) -> tuple[np.ndarray, np.ndarray]:
        """Both scores in one pass: ``(q (n,), t2 (n,))``."""
        self._check()
        return self._batched(_q_t2, X)

    # ---- limits ---------------------------------------------------------------------
    def q_limit(self, confidence: float = 0.95, method: str = "jackson-mudholkar") -> float:
        """Upper confidence limit of Q from the residual eigenvalues (see :func:`~jaxuft.uq.limits.q_limit`)."""
        from .limits import q_limit

        self._check()
        return q_limit(self.residual_moments_, confidence, method)

    def t2_limit(self, confidence: float = 0.95) -> float:
        """F-distribution upper limit of T² (see :func:`~jaxuft.uq.limits.t2_limit`)."""
        from .limits import t2_limit

        self._check()
        return t2_limit(self.n_components_, self.n_samples_, confidence)

    # ---- persistence ----------------------------------------------------------------
    def save(self, path, metadata: dict | None = None, arrays: dict | None = None) -> Path:
        """Write arrays and a JSON header to one ``.npz`` (no pickles).

        ``metadata``: JSON-serialisable dict merged into ``self.metadata``;
        ``arrays``: extra numeric arrays (e.g. training scores), returned by
        :meth:`load` in ``extra_arrays``.  A ``.npz`` suffix is added when missing.
        """
        self._check()
        meta = dict(self.metadata)
        if metadata:
            meta.update(metadata)
        header = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "n_components": self.n_components,
            "scale": self.scale,
            "dtype": self.dtype.name,
            "method": self.method,
            "fit_method": getattr(self, "fit_method_", None),
            "n_samples": self.n_samples_,
            "n_features": self.n_features_in_,
            "n_components_": self.n_components_,
            "total_variance": self.total_variance_,
            "noise_variance": self.noise_variance_,
            "residual_moments": list(self.residual_moments_),
            "residual_moments_exact": self.residual_moments_exact_,
            "metadata": meta,
        }
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_name(path.name + ".npz")
        path.parent.mkdir(parents=True, exist_ok=True)
        extra = {}
        for k, v in {**getattr(self, "extra_arrays", {}), **(arrays or {})}.items():
            v = np.asarray(v)
            if v.dtype == object:
                raise ValueError(f"extra array {k!r} is not numeric")
            extra[f"extra/{k}"] = v
        np.savez(
            path,
            header=np.frombuffer(json.dumps(header).encode(), dtype=np.uint8),
            mean=self.mean_,
            scale=self._scale_arr,
            components=self.components_,
            explained_variance=self.explained_variance_,
            explained_variance_ratio=self.explained_variance_ratio_,
            residual_variance=self.residual_variance_,
            **extra,
        )
        return path

    @classmethod
    def load(cls, path) -> "PCA":
        """Read a file written by :meth:`save`."""
        with np.load(path, allow_pickle=False) as z:
            header = json.loads(bytes(z["header"]).decode())
            if header.get("format") != FORMAT:
                raise ValueError(f"{path} is not a jaxuft PCA file (format {header.get('format')!r})")
            if header.get("version", 0) > FORMAT_VERSION:
                raise ValueError(f"{path} was written by a newer jaxuft (format version {header['version']})")
            arrays = {k: np.array(z[k]) for k in z.files if k != "header"}
        extra = {k[len("extra/"):]: v for k, v in arrays.items() if k.startswith("extra/")}
        nc = header["n_components"]
        pca = cls(nc, scale=header["scale"], dtype=header["dtype"], method=header["method"])
        pca.fit_method_ = header.get("fit_method")
        pca.n_samples_ = int(header["n_samples"])
        pca.n_features_in_ = int(header["n_features"])
        pca.n_components_ = int(header["n_components_"])
        pca.mean_ = arrays["mean"]
        pca._scale_arr = arrays["scale"]
        pca.scale_ = arrays["scale"] if pca.scale else None
        pca.components_ = arrays["components"]
        pca.explained_variance_ = arrays["explained_variance"]
        pca.explained_variance_ratio_ = arrays["explained_variance_ratio"]
        pca.residual_variance_ = arrays["residual_variance"]
        pca.singular_values_ = np.sqrt(pca.explained_variance_ * (pca.n_samples_ - 1))
        pca.total_variance_ = float(header["total_variance"])
        pca.noise_variance_ = float(header["noise_variance"])
        pca.residual_moments_ = tuple(header["residual_moments"])
        pca.residual_moments_exact_ = bool(header["residual_moments_exact"])
        pca.metadata = header.get("metadata", {})
        pca.extra_arrays = extra
        pca._state = None
        return pca

    def __repr__(self) -> str:
        if hasattr(self, "components_"):
            return (
                f"PCA(n_components_={self.n_components_}, n_features={self.n_features_in_}, "
                f"n_samples={self.n_samples_}, explained={np.sum(self.explained_variance_ratio_):.4f})"
            )
        return f"PCA(n_components={self.n_components!r}, scale={self.scale}, method={self.method!r})"


def pca_state(pca: PCA, dtype=None) -> PCAState:
    """The device arrays of a fitted :class:`PCA` (for compiled code)."""
    return pca.state(dtype)
