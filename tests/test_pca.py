"""jaxuft.uq.PCA against scikit-learn (float64, <= 1e-6 relative), Q/T², limits, streaming, save/load."""

import numpy as np
import pytest

from jaxuft.uq import PCA, CovarianceAccumulator, ElementLimits, element_limits, q_limit, t2_limit

sklearn_decomposition = pytest.importorskip("sklearn.decomposition", reason="scikit-learn is a test dependency")
SKPCA = sklearn_decomposition.PCA

RTOL = 1e-6


def rel(a, b):
    return np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(np.asarray(b)))


@pytest.fixture(scope="module")
def data():
    """Full-rank data with a decaying spectrum and a large offset (tests centring)."""
    rng = np.random.default_rng(0)
    n, f = 400, 120
    spectrum = np.exp(-np.arange(f) / 12.0) + 1e-3
    basis, _ = np.linalg.qr(rng.normal(size=(f, f)))
    X = (rng.normal(size=(n, f)) * np.sqrt(spectrum)) @ basis.T + 7.0
    Y = (rng.normal(size=(60, f)) * np.sqrt(spectrum[::-1])) @ basis.T + 7.0  # off-distribution
    return X, Y


def sk_q(s, Y):
    return np.sum((Y - s.inverse_transform(s.transform(Y))) ** 2, axis=1)


def check_against_sklearn(p, s, Y):
    assert p.n_components_ == s.n_components_
    assert rel(p.explained_variance_, s.explained_variance_) < RTOL
    assert rel(p.explained_variance_ratio_, s.explained_variance_ratio_) < RTOL
    assert rel(p.singular_values_, s.singular_values_) < RTOL
    assert rel(np.abs(p.components_), np.abs(s.components_)) < RTOL
    assert rel(p.components_, s.components_) < RTOL  # same sign convention
    assert rel(p.mean_, s.mean_) < RTOL
    assert rel(p.transform(Y), s.transform(Y)) < RTOL
    assert rel(p.inverse_transform(p.transform(Y)), s.inverse_transform(s.transform(Y))) < RTOL
    assert rel(p.q_residual(Y), sk_q(s, Y)) < RTOL
    assert abs(p.noise_variance_ - s.noise_variance_) <= RTOL * s.noise_variance_


@pytest.mark.parametrize("n_components", [5, 0.9])
@pytest.mark.parametrize("method,kw", [("svd", {}), ("covariance", {"chunk_size": 64}),
                                       ("covariance", {"chunk_size": 64, "eigh_max": 50})])
def test_matches_sklearn(data, n_components, method, kw):
    X, Y = data
    s = SKPCA(n_components, svd_solver="full").fit(X)
    p = PCA(n_components, method=method, **kw).fit(X)
    check_against_sklearn(p, s, Y)
    if kw.get("eigh_max") == 50:
        assert not p.residual_moments_exact_ and p.n_iter_ >= 1


def test_t2_matches_definition(data):
    X, Y = data
    s = SKPCA(6, svd_solver="full").fit(X)
    p = PCA(6).fit(X)
    t2 = np.sum(s.transform(Y) ** 2 / s.explained_variance_, axis=1)
    assert rel(p.t2(Y), t2) < RTOL
    q, t = p.q_and_t2(Y)
    np.testing.assert_allclose(q, p.q_residual(Y), rtol=1e-12)
    np.testing.assert_allclose(t, p.t2(Y), rtol=1e-12)


def test_scaled_matches_standard_scaler(data):
    from sklearn.preprocessing import StandardScaler

    X, Y = data
    X = X * np.linspace(0.5, 20.0, X.shape[1])
    Y = Y * np.linspace(0.5, 20.0, X.shape[1])
    sc = StandardScaler().fit(X)
    s = SKPCA(4, svd_solver="full").fit(sc.transform(X))
    for method in ("svd", "covariance"):
        p = PCA(4, scale=True, method=method).fit(X)
        assert rel(p.scale_, sc.scale_) < RTOL
        assert rel(p.explained_variance_, s.explained_variance_) < RTOL
        assert rel(p.transform(Y), s.transform(sc.transform(Y))) < RTOL
        q_ref = np.sum((sc.transform(Y) - s.inverse_transform(s.transform(sc.transform(Y)))) ** 2, axis=1)
        assert rel(p.q_residual(Y), q_ref) < RTOL
        assert rel(p.inverse_transform(p.transform(Y)), sc.inverse_transform(s.inverse_transform(s.transform(sc.transform(Y))))) < RTOL


def test_streamed_chunks_and_merged_accumulators(data):
    X, Y = data
    s = SKPCA(5, svd_solver="full").fit(X)
    chunks = (X[i : i + 37] for i in range(0, len(X), 37))
    p = PCA(5).fit(chunks)
    assert p.fit_method_ == "covariance"
    check_against_sklearn(p, s, Y)
    a = CovarianceAccumulator().update(X[:150])
    b = CovarianceAccumulator().update(X[150:] )
    check_against_sklearn(PCA(5).fit_accumulator(a.merge(b)), s, Y)


def test_float32_close(data):
    X, Y = data
    s = SKPCA(5, svd_solver="full").fit(X)
    p = PCA(5, dtype="float32").fit(X)
    assert rel(p.explained_variance_, s.explained_variance_) < 1e-4
    assert rel(p.q_residual(Y), sk_q(s, Y)) < 1e-3


def test_save_load_roundtrip(tmp_path, data):
    X, Y = data
    p = PCA(5).fit(X)
    path = p.save(tmp_path / "model", metadata={"descriptor": {"kind": "soap"}}, arrays={"train_q": p.q_residual(X)})
    assert path.suffix == ".npz"
    with np.load(path, allow_pickle=False) as z:  # no pickles inside
        assert "header" in z.files
    r = PCA.load(path)
    assert r.metadata["descriptor"] == {"kind": "soap"}
    np.testing.assert_array_equal(r.components_, p.components_)
    np.testing.assert_array_equal(r.q_residual(Y), p.q_residual(Y))
    np.testing.assert_array_equal(r.extra_arrays["train_q"], p.q_residual(X))
    assert r.q_limit() == p.q_limit() and r.t2_limit() == p.t2_limit()


def test_input_errors(data):
    X, _ = data
    with pytest.raises(RuntimeError, match="not fitted"):
        PCA(2).transform(X)
    p = PCA(3).fit(X)
    with pytest.raises(ValueError, match="shape"):
        p.q_residual(X[:, :10])
    with pytest.raises(ValueError, match="at most"):
        PCA(500).fit(X)
    with pytest.raises(ValueError, match="variance target"):
        PCA(1.5)


def test_jackson_mudholkar_against_monte_carlo():
    """Q of Gaussian samples is a weighted chi-square of the discarded eigenvalues."""
    rng = np.random.default_rng(1)
    lam = np.exp(-np.arange(30) / 8.0)  # a smoothly decaying residual spectrum
    theta = tuple(float(np.sum(lam**p)) for p in (1, 2, 3))
    q = (rng.normal(size=(200_000, len(lam))) ** 2) @ lam
    for conf in (0.9, 0.95, 0.99):
        emp = np.quantile(q, conf)
        assert abs(q_limit(theta, conf) / emp - 1) < 0.02
        assert abs(q_limit(theta, conf, method="box") / emp - 1) < 0.04
    assert q_limit((0.0, 0.0, 0.0)) == 0.0


def test_pca_limits_use_residual_spectrum(data):
    X, _ = data
    p = PCA(5).fit(X)
    s = SKPCA(None, svd_solver="full").fit(X)
    rest = s.explained_variance_[5:]
    theta = tuple(np.sum(rest**k) for k in (1, 2, 3))
    np.testing.assert_allclose(p.residual_moments_, theta, rtol=1e-9)
    assert p.q_limit(0.95) == pytest.approx(q_limit(theta, 0.95), rel=1e-9)
    # the fraction of training samples above the 95% limit is about 5 %
    frac = np.mean(p.q_residual(X) > p.q_limit(0.95))
    assert 0.01 < frac < 0.1
    # subspace-iteration path: leading moments estimated from trace and Frobenius norm
    pi = PCA(5, method="covariance", eigh_max=50).fit(X)
    np.testing.assert_allclose(pi.residual_moments_[:2], theta[:2], rtol=1e-8)
    assert pi.q_limit(0.95) == pytest.approx(p.q_limit(0.95), rel=0.05)


def test_t2_limit():
    from scipy.stats import f

    assert t2_limit(5, 100, 0.95) == pytest.approx(5 * 99 / 95 * f.ppf(0.95, 5, 95))
    assert t2_limit(5, 5) == float("inf")
    rng = np.random.default_rng(2)
    X = rng.normal(size=(4000, 6))
    p = PCA(3).fit(X)
    frac = np.mean(p.t2(X) > p.t2_limit(0.95))
    assert 0.03 < frac < 0.07


def test_element_limits():
    q = np.array([1.0, 3.0, 10.0, 12.0, 14.0])
    z = np.array([1, 1, 8, 8, 8])
    lim = element_limits(q, z, n_sigma=2.0)
    assert lim.mean == {"H": 2.0, "O": 12.0}
    assert lim.limit["H"] == pytest.approx(2.0 + 2 * 1.0)
    assert lim.limit["O"] == pytest.approx(12.0 + 2 * np.std([10.0, 12.0, 14.0]))
    np.testing.assert_array_equal(lim.array([8, 1, 6]), [lim.limit["O"], lim.limit["H"], np.inf])
    assert ElementLimits.from_dict(lim.to_dict()) == lim


@pytest.mark.parametrize("scale", [False, True])
def test_accumulator_list_fits_without_copy(data, scale):
    """A list of accumulators is fitted through CovarianceOperator (no F x F copy, accumulators
    left intact): the same PCA as the merged accumulator's in-place fit, and as scikit-learn's."""
    X, Y = data
    a = CovarianceAccumulator().update(X[:150])  # shifts differ (each accumulator's first chunk's mean)
    b = CovarianceAccumulator().update(X[150:310]).update(X[310:])
    kw = dict(scale=scale, eigh_max=50)
    ref = PCA(5, **kw).fit_accumulator(a.merge(b), consume=True)
    p = PCA(5, **kw).fit_accumulator([a, b])
    assert a.sumsq is not None and b.sumsq is not None  # still usable
    assert not p.residual_moments_exact_
    assert rel(p.explained_variance_, ref.explained_variance_) < 1e-10
    assert rel(p.components_, ref.components_) < 1e-8
    assert rel(p.mean_, ref.mean_) < 1e-12
    assert rel(p.residual_moments_, ref.residual_moments_) < 1e-10
    assert abs(p.total_variance_ - ref.total_variance_) <= 1e-12 * ref.total_variance_
    if not scale:
        check_against_sklearn(p, SKPCA(5, svd_solver="full").fit(X), Y)
    # each part alone, from the same (unconsumed) sums
    alone = PCA(5, **kw).fit_accumulator([b])
    ref_b = PCA(5, **kw).fit(X[150:])
    assert rel(alone.explained_variance_, ref_b.explained_variance_) < 1e-8
    with pytest.raises(ValueError, match="single accumulator"):
        PCA(5, **kw).fit_accumulator([a, b], consume=True)


def test_absorb_equals_merge(data):
    X, _ = data
    a = CovarianceAccumulator().update(X[:150])
    b = CovarianceAccumulator().update(X[150:])
    merged = a.merge(b)
    a.absorb(b)
    assert a.n == merged.n == len(X)
    np.testing.assert_allclose(np.asarray(a.sumsq), np.asarray(merged.sumsq), rtol=1e-13, atol=1e-10)
    np.testing.assert_allclose(np.asarray(a.sum), np.asarray(merged.sum), rtol=1e-13, atol=1e-10)
    assert b.sumsq is not None  # the absorbed accumulator is untouched
