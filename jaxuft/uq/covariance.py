"""Streamed covariance of per-atom descriptors on device, and the leading eigenpairs of a large covariance.

:class:`CovarianceAccumulator` sums chunks ``(n_i, n_features)`` about a shift (no
cancellation for large means) and merges exactly; :func:`leading_eigenpairs` finds the
top eigenpairs by block subspace iteration with Rayleigh–Ritz (one ``C @ V`` per pass),
for feature counts where a full ``eigh`` is too slow.  Used by :class:`~jaxuft.uq.pca.PCA`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["CovarianceAccumulator", "leading_eigenpairs"]


#: rows of ``X^T X`` updated per product: the update's temporary is (_BLOCK, F), not (F, F)
_BLOCK = 1024


@functools.partial(jax.jit, donate_argnums=(0, 1))
def _accumulate(s, ss, shift, chunk):
    d = chunk - shift
    f = ss.shape[0]
    blk = min(_BLOCK, f)
    n_full = f // blk

    def rows(i, ss):  # rows [a, a + blk) of X^T X, in place; a loop (not unrolled slices) so XLA keeps them apart
        a = i * blk
        upd = jax.lax.dynamic_slice_in_dim(d, a, blk, axis=1).T @ d
        cur = jax.lax.dynamic_slice_in_dim(ss, a, blk, axis=0)
        return jax.lax.dynamic_update_slice_in_dim(ss, cur + upd, a, axis=0)

    ss = jax.lax.fori_loop(0, n_full, rows, ss)
    tail = n_full * blk
    if tail < f:  # the remaining rows (static shape)
        ss = jax.lax.dynamic_update_slice_in_dim(ss, ss[tail:] + d[:, tail:].T @ d, tail, axis=0)
    return s + jnp.sum(d, axis=0), ss


@jax.jit
def _subspace_step(C, V):
    """One block power step with Rayleigh–Ritz on orthonormal ``V (F, M)``: one product with ``C``.

    Returns the Ritz vectors' next power iterate (orthonormalised), the Ritz values
    (descending) and the residual norms ``|C v - lambda v|`` of the current Ritz pairs.
    """
    W = C @ V
    H = V.T @ W
    H = 0.5 * (H + H.T)
    w, U = jnp.linalg.eigh(H)
    w, U = w[::-1], U[:, ::-1]
    ritz, cw = V @ U, W @ U
    resid = jnp.linalg.norm(cw - ritz * w, axis=0)
    V_next, _ = jnp.linalg.qr(cw)
    return V_next, ritz, w, resid


class CovarianceAccumulator:
    """Streamed first and second moments of ``(n_i, n_features)`` chunks, on device.

    Sums are taken about a shift (the first chunk's mean) so that the covariance
    does not suffer cancellation when the mean is large compared with the spread.
    ``merge`` combines accumulators of different data sets exactly.
    """

    def __init__(self, dtype: str = "float64"):
        from ..potential import resolve_dtype

        self.dtype = resolve_dtype(dtype)
        self.n = 0
        self.shift = None
        self.sum = None
        self.sumsq = None

    @property
    def n_features(self) -> int:
        if self.shift is None:
            raise ValueError("no samples accumulated")
        return int(self.shift.shape[0])

    def update(self, chunk) -> "CovarianceAccumulator":
        c = jnp.asarray(chunk, dtype=self.dtype)
        if c.ndim != 2:
            raise ValueError(f"every chunk must be 2-D (n_i, n_features), got shape {c.shape}")
        if c.shape[0] == 0:
            return self
        if self.shift is None:
            f = c.shape[1]
            self.shift = jnp.mean(c, axis=0)
            self.sum = jnp.zeros((f,), self.dtype)
            self.sumsq = jnp.zeros((f, f), self.dtype)
        elif self.sumsq is None:
            raise ValueError("this accumulator was consumed by mean_and_covariance(consume=True)")
        elif c.shape[1] != self.shift.shape[0]:
            raise ValueError(f"chunks disagree on n_features: {c.shape[1]} vs {self.shift.shape[0]}")
        self.sum, self.sumsq = _accumulate(self.sum, self.sumsq, self.shift, c)
        self.n += int(c.shape[0])
        return self

    def merge(self, other: "CovarianceAccumulator") -> "CovarianceAccumulator":
        """A new accumulator holding the samples of both (about this one's shift)."""
        if other.shift is None:
            return self._copy()
        if self.shift is None:
            return other._copy()
        if other.shift.shape != self.shift.shape:
            raise ValueError("accumulators disagree on n_features")
        out = self._copy()
        delta = (other.shift - self.shift).astype(self.dtype)
        s_b = other.sum.astype(self.dtype)
        out.sum = self.sum + s_b + other.n * delta
        out.sumsq = (
            self.sumsq + other.sumsq.astype(self.dtype) + jnp.outer(s_b, delta) + jnp.outer(delta, s_b)
            + other.n * jnp.outer(delta, delta)
        )
        out.n = self.n + other.n
        return out

    def _copy(self) -> "CovarianceAccumulator":
        out = CovarianceAccumulator(self.dtype.name)
        out.n, out.shift, out.sum, out.sumsq = self.n, self.shift, self.sum, self.sumsq
        return out

    def mean_and_covariance(self, dtype=None, consume: bool = False):
        """``mean (F,)`` and the unbiased covariance ``(F, F)`` (``n - 1``), device arrays.

        One fused device program (no F x F temporaries beyond the result).  ``consume``:
        release this accumulator's ``F x F`` sum afterwards (saves its memory; the
        accumulator cannot be used again)."""
        if self.sumsq is None and self.shift is not None:
            raise ValueError("this accumulator was consumed by mean_and_covariance(consume=True)")
        if self.n < 2:
            raise ValueError(f"need at least 2 samples, have {self.n}")
        dt = self.dtype if dtype is None else np.dtype(dtype)
        n = jnp.asarray(self.n, dt)
        if consume and dt == self.dtype:  # the F x F sum becomes the covariance, in place
            total, sumsq = self.sum, self.sumsq
            self.sum = self.sumsq = None
            return _moments_in_place(self.shift, total, sumsq, n)
        mean, cov = _moments(self.shift, self.sum, self.sumsq, n, dt)
        if consume:
            self.sum = self.sumsq = None
        return mean, cov


@functools.partial(jax.jit, donate_argnums=(2,))
def _moments_in_place(shift, s, ss, n):
    """:func:`_moments` writing the covariance into the donated ``ss`` (no second F x F buffer)."""
    d = s / n
    f = ss.shape[0]
    blk = min(_BLOCK, f)
    nb = -(-f // blk)

    def centre(i, ss):  # rows of (ss - n d d^T) / (n - 1), in place; rows of a clamped last block done already are kept
        a = i * blk
        start = jnp.minimum(a, f - blk)
        rows = jax.lax.dynamic_slice_in_dim(ss, start, blk, axis=0)
        new = (rows - n * jnp.outer(jax.lax.dynamic_slice_in_dim(d, start, blk), d)) / (n - 1)
        new = jnp.where(((start + jnp.arange(blk)) >= a)[:, None], new, rows)
        return jax.lax.dynamic_update_slice_in_dim(ss, new, start, axis=0)

    ss = jax.lax.fori_loop(0, nb, centre, ss)

    def pair(k, ss):  # symmetrise: block (i, j) above the diagonal <- the mean with its mirror, below <- the
        # (already symmetrised) mirror's transpose.  One in-place update per step (two would make XLA copy ss);
        # a clamped last block repeats rows, which is harmless as the result is already symmetric there.
        i, j = k // nb, k % nb
        a = jnp.minimum(i * blk, f - blk)
        b = jnp.minimum(j * blk, f - blk)
        here = jax.lax.dynamic_slice(ss, (a, b), (blk, blk))
        mirror = jax.lax.dynamic_slice(ss, (b, a), (blk, blk)).T
        m = jnp.where(j >= i, 0.5 * (here + mirror), mirror)
        return jax.lax.dynamic_update_slice(ss, m, (a, b))

    ss = jax.lax.fori_loop(0, nb * nb, pair, ss)
    return shift + d, ss


@functools.partial(jax.jit, static_argnums=(4,))
def _moments(shift, s, ss, n, dt):
    d = (s / n).astype(dt)
    mean = shift.astype(dt) + d
    cov = (ss.astype(dt) - n * jnp.outer(d, d)) / (n - 1)
    return mean, 0.5 * (cov + cov.T)


def leading_eigenpairs(cov, m: int, check: int, *, tol: float = 1e-10, max_iter: int = 500, seed: int = 0,
                       progress: bool | None = False):
    """The ``m`` leading eigenpairs of the symmetric ``cov (F, F)`` by block subspace iteration.

    Converged when the ``check`` leading Ritz pairs' residuals ``|C v - lambda v|`` are
    below ``max(tol, 100 eps) * lambda_1`` (eigenvector error ~ residual / gap); stops
    early after 20 passes without a 10 % improvement.  Returns ``(w (m,) descending
    numpy, ritz (F, m) device, n_iter, worst relative residual)``.  ``progress``: a
    bar over passes with the residual (None: only on a terminal).
    """
    from ..progress import progress as bar_of

    dtype = cov.dtype
    f = cov.shape[0]
    V = jax.random.normal(jax.random.PRNGKey(seed), (f, m), dtype=dtype)
    V, _ = jnp.linalg.qr(V)
    res_tol = max(tol, 100.0 * float(np.finfo(dtype).eps))
    best, since_best = np.inf, 0
    with bar_of(total=max_iter, desc=f"PCA eigenpairs ({m} of {f})", unit="pass", enabled=progress,
                leave=False) as bar:
        for it in range(max_iter):
            V, ritz, w, res = _subspace_step(cov, V)
            w_np = np.asarray(w, np.float64)
            worst = float(np.max(np.asarray(res, np.float64)[:check])) / max(abs(w_np[0]), 1e-300)
            bar.set_postfix_str(f"residual {worst:.1e} (target {res_tol:.0e})", refresh=False)
            bar.update(1)
            if worst < res_tol:
                break
            if worst < 0.9 * best:
                best, since_best = worst, 0
            else:
                since_best += 1
                if since_best >= 20:
                    break
    return w_np, ritz, it + 1, worst
