"""Confidence limits for Q-residuals and Hotelling's T², and the paper's per-element empirical limits.

* :func:`q_limit`: Jackson & Mudholkar (1979) from the residual eigenvalue moments
  ``theta_i = sum_{j > k} lambda_j^i`` (``i = 1, 2, 3``); Box's ``g chi^2_h``
  approximation as an alternative (``method="box"``).
* :func:`t2_limit`: ``k (n - 1) / (n - k) F_{k, n-k}(confidence)``.
* :class:`ElementLimits`: per element, ``mean + n_sigma * std`` of the training
  Q-residuals (the paper uses ``n_sigma = 2``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from ase.data import atomic_numbers as _symbol_to_z
from ase.data import chemical_symbols


def q_limit(residual_moments, confidence: float = 0.95, method: str = "jackson-mudholkar") -> float:
    """Upper ``confidence`` limit of Q for samples like the training data.

    ``residual_moments``: ``(theta1, theta2, theta3)`` of the discarded eigenvalues
    (``PCA.residual_moments_``).  Returns 0 when nothing is discarded.
    """
    from scipy.stats import chi2, norm

    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    t1, t2, t3 = (float(x) for x in residual_moments)
    if t1 <= 0.0 or t2 <= 0.0:
        return 0.0
    if method == "box":
        g, h = t2 / t1, t1 * t1 / t2
        return float(g * chi2.ppf(confidence, h))
    if method != "jackson-mudholkar":
        raise ValueError(f"method must be 'jackson-mudholkar' or 'box', got {method!r}")
    h0 = 1.0 - 2.0 * t1 * t3 / (3.0 * t2 * t2)
    c = norm.ppf(confidence)
    base = c * np.sqrt(2.0 * t2 * h0 * h0) / t1 + 1.0 + t2 * h0 * (h0 - 1.0) / (t1 * t1)
    if h0 <= 0.0 or base <= 0.0:  # outside the approximation's domain: fall back to Box
        return q_limit(residual_moments, confidence, "box")
    return float(t1 * base ** (1.0 / h0))


def t2_limit(n_components: int, n_samples: int, confidence: float = 0.95) -> float:
    """Upper ``confidence`` limit of Hotelling's T² with ``k`` components from ``n`` training samples."""
    from scipy.stats import f

    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    k, n = int(n_components), int(n_samples)
    if n <= k:
        return float("inf")
    return float(k * (n - 1) / (n - k) * f.ppf(confidence, k, n - k))


def _z(x) -> int:
    if isinstance(x, (int, np.integer)):
        return int(x)
    if x in _symbol_to_z:
        return _symbol_to_z[x]
    raise ValueError(f"unknown element {x!r}")


@dataclass
class ElementLimits:
    """Per-element statistics of training Q and an upper limit ``mean + n_sigma * std``.

    ``mean``, ``std``, ``limit``: dicts keyed by chemical symbol.
    """

    mean: dict = field(default_factory=dict)
    std: dict = field(default_factory=dict)
    limit: dict = field(default_factory=dict)
    n_sigma: float = 2.0
    count: dict = field(default_factory=dict)

    @classmethod
    def from_values(cls, values, numbers, n_sigma: float = 2.0) -> "ElementLimits":
        """Empirical limits from per-atom ``values (n,)`` and atomic ``numbers (n,)``."""
        values = np.asarray(values, dtype=np.float64)
        numbers = np.asarray(numbers)
        if values.shape != numbers.shape:
            raise ValueError(f"values {values.shape} and numbers {numbers.shape} must have the same shape")
        out = cls(n_sigma=float(n_sigma))
        for z in np.unique(numbers):
            v = values[numbers == z]
            s = chemical_symbols[int(z)]
            out.mean[s] = float(v.mean())
            out.std[s] = float(v.std())
            out.limit[s] = float(v.mean() + n_sigma * v.std())
            out.count[s] = int(v.size)
        return out

    def array(self, atomic_numbers, missing: float = np.inf) -> np.ndarray:
        """Limits ordered like ``atomic_numbers`` (e.g. a model's species), ``missing`` where unknown."""
        return np.asarray(
            [self.limit.get(chemical_symbols[_z(z)], missing) for z in atomic_numbers], dtype=np.float64
        )

    def to_dict(self) -> dict:
        return {"mean": self.mean, "std": self.std, "limit": self.limit, "n_sigma": self.n_sigma, "count": self.count}

    @classmethod
    def from_dict(cls, d: dict) -> "ElementLimits":
        return cls(
            mean=dict(d.get("mean", {})),
            std=dict(d.get("std", {})),
            limit=dict(d.get("limit", {})),
            n_sigma=float(d.get("n_sigma", 2.0)),
            count=dict(d.get("count", {})),
        )


def element_limits(values, numbers, n_sigma: float = 2.0) -> ElementLimits:
    """The paper's empirical limits: per element ``mean + n_sigma * std`` of training Q."""
    return ElementLimits.from_values(values, numbers, n_sigma)
