"""Streamed covariance of per-atom descriptors on device, and the leading eigenpairs of a large covariance.

:class:`CovarianceAccumulator` sums chunks ``(n_i, n_features)`` about a shift (no
cancellation for large means) and merges exactly; :func:`leading_eigenpairs` finds the
top eigenpairs by block subspace iteration with Rayleigh–Ritz (one ``C @ V`` per pass),
for feature counts where a full ``eigh`` is too slow.  :class:`CovarianceOperator` is the covariance of one
or several accumulators as a linear operator (their ``X^T X`` sums plus a low-rank correction), so
that a PCA of merged data sets, or of an accumulator that is still needed, makes no ``F x F``
copy.  Used by :class:`~jaxuft.uq.pca.PCA`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["CovarianceAccumulator", "CovarianceOperator", "leading_eigenpairs"]


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
def _matmat(C, V):
    return C @ V


@jax.jit
def _rayleigh_ritz(V, W):
    """Rayleigh–Ritz on orthonormal ``V (F, M)`` with ``W = C V``.

    Returns the Ritz vectors' next power iterate (orthonormalised), the Ritz values
    (descending) and the residual norms ``|C v - lambda v|`` of the current Ritz pairs.
    """
    H = V.T @ W
    H = 0.5 * (H + H.T)
    w, U = jnp.linalg.eigh(H)
    w, U = w[::-1], U[:, ::-1]
    ritz, cw = V @ U, W @ U
    resid = jnp.linalg.norm(cw - ritz * w, axis=0)
    V_next, _ = jnp.linalg.qr(cw)
    return V_next, ritz, w, resid


@jax.jit
def _op_matmat(sums, left, right, inv_scale, inv_nm1, V):
    """``D^-1 [(sum_i S_i + left right^T) / (n - 1)] D^-1 V`` without forming the sum."""
    Vs = V * inv_scale[:, None]
    acc = left @ (right.T @ Vs)
    for S in sums:
        acc = acc + S @ Vs
    return acc * (inv_nm1 * inv_scale)[:, None]


@jax.jit
def _op_diag(sums, left, right, inv_scale, inv_nm1):
    d = jnp.sum(left * right, axis=1)
    for S in sums:
        d = d + jnp.diagonal(S)
    return d * inv_nm1 * inv_scale * inv_scale


@jax.jit
def _op_frob2(sums, left, right, inv_scale, inv_nm1):
    """Squared Frobenius norm of the operator's matrix, formed ``_BLOCK`` rows at a time."""
    f = sums[0].shape[0]
    blk = min(_BLOCK, f)
    nb = -(-f // blk)

    def body(i, total):
        a = i * blk
        start = jnp.minimum(a, f - blk)
        rows = jax.lax.dynamic_slice_in_dim(left, start, blk, axis=0) @ right.T
        for S in sums:
            rows = rows + jax.lax.dynamic_slice_in_dim(S, start, blk, axis=0)
        rows = rows * (inv_nm1 * jax.lax.dynamic_slice_in_dim(inv_scale, start, blk))[:, None] * inv_scale[None, :]
        fresh = (start + jnp.arange(blk)) >= a  # a clamped last block: count each row once
        return total + jnp.sum(jnp.where(fresh[:, None], rows * rows, 0.0))

    return jax.lax.fori_loop(0, nb, body, jnp.zeros((), sums[0].dtype))


class CovarianceOperator:
    """The covariance of one or several accumulators' samples together, as a linear operator.

    ``C = D^-1 [(sum_i S_i + L R^T) / (n - 1)] D^-1``: the accumulators' ``X^T X`` sums
    ``S_i`` (referenced, not copied), a rank ``<= 3k + 1`` correction for their different
    shifts and the centring, and an optional diagonal scaling ``D`` (:meth:`scaled`).
    Products with ``(F, M)`` blocks, the diagonal and the Frobenius norm are computed
    without any ``F x F`` temporary, so merged data sets (or an accumulator still in
    use) are fitted in the memory of their sums alone.
    """

    def __init__(self, accumulators, dtype=None):
        accs = [a for a in accumulators if a.n > 0]
        if not accs:
            raise ValueError("no samples accumulated")
        for a in accs:
            if a.sumsq is None:
                raise ValueError("this accumulator was consumed by mean_and_covariance(consume=True)")
            if a.shift.shape != accs[0].shift.shape:
                raise ValueError("accumulators disagree on n_features")
        self.n = sum(a.n for a in accs)
        if self.n < 2:
            raise ValueError(f"need at least 2 samples, have {self.n}")
        dt = accs[0].dtype if dtype is None else np.dtype(dtype)
        self.dtype = dt
        c = accs[0].shift.astype(dt)
        total = jnp.zeros_like(c)
        lefts, rights = [], []
        for a in accs:  # sum over a's rows of (x - c)(x - c)^T = S_a + s_a δ^T + δ s_a^T + n_a δ δ^T
            delta = a.shift.astype(dt) - c
            s_a = a.sum.astype(dt)
            total = total + s_a + a.n * delta
            if a is not accs[0]:
                lefts += [s_a, delta, a.n * delta]
                rights += [delta, s_a, delta]
        d = total / self.n
        lefts.append(-self.n * d)
        rights.append(d)
        self.mean = c + d
        self.sums = tuple(a.sumsq if a.sumsq.dtype == dt else a.sumsq.astype(dt) for a in accs)
        self.left = jnp.stack(lefts, axis=1)
        self.right = jnp.stack(rights, axis=1)
        self.inv_scale = jnp.ones_like(c)
        self.inv_nm1 = jnp.asarray(1.0 / (self.n - 1), dt)

    @property
    def shape(self) -> tuple[int, int]:
        f = int(self.mean.shape[0])
        return (f, f)

    def scaled(self, scale) -> "CovarianceOperator":
        """The same operator divided by ``scale`` on both sides (a correlation-like matrix)."""
        out = object.__new__(CovarianceOperator)
        out.__dict__.update(self.__dict__)
        out.inv_scale = 1.0 / jnp.asarray(scale, self.dtype)
        return out

    def _args(self):
        return self.sums, self.left, self.right, self.inv_scale, self.inv_nm1

    def __matmul__(self, V):
        return _op_matmat(*self._args(), V)

    def diagonal(self):
        return _op_diag(*self._args())

    def frobenius2(self) -> float:
        return float(_op_frob2(*self._args()))


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

    def absorb(self, other: "CovarianceAccumulator") -> "CovarianceAccumulator":
        """Add ``other``'s samples to this accumulator in place (no ``F x F`` copy; ``other`` is left as it was).

        The result equals ``self.merge(other)``; this accumulator's old sums are overwritten."""
        if other.shift is None or other.n == 0:
            return self
        if self.shift is None:
            self.n, self.shift, self.sum = other.n, other.shift, other.sum
            self.sumsq = jnp.array(other.sumsq, copy=True)
            return self
        if self.sumsq is None or other.sumsq is None:
            raise ValueError("this accumulator was consumed by mean_and_covariance(consume=True)")
        if other.shift.shape != self.shift.shape:
            raise ValueError("accumulators disagree on n_features")
        delta = (other.shift - self.shift).astype(self.dtype)
        self.sum, self.sumsq = _absorb(self.sum, self.sumsq, other.sum.astype(self.dtype),
                                       other.sumsq.astype(self.dtype), delta, jnp.asarray(other.n, self.dtype))
        self.n += other.n
        return self

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


@functools.partial(jax.jit, donate_argnums=(0, 1))
def _absorb(s, ss, s_b, ss_b, delta, n_b):
    """Sums about this shift after adding another accumulator's (one fused elementwise update of the donated ``ss``)."""
    ss = ss + ss_b + s_b[:, None] * delta[None, :] + delta[:, None] * s_b[None, :] + n_b * delta[:, None] * delta[None, :]
    return s + s_b + n_b * delta, ss


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

    ``cov``: an array or a :class:`CovarianceOperator` (anything with ``shape``, ``dtype``
    and ``cov @ V``).

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
            W = cov @ V if isinstance(cov, CovarianceOperator) else _matmat(cov, V)
            V, ritz, w, res = _rayleigh_ritz(V, W)
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
