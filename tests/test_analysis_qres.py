"""Q-residuals for the paper analysis: the descriptor cache, the streamed PCA against jaxuft.uq.PCA, per-element Q,
and the paper's explained-variance figure (PCA(5) of SOAP on N-50 + FT5)."""

from __future__ import annotations

import numpy as np
import pytest

from jaxuft.analysis import read_frames
from jaxuft.analysis.qres import DescriptorStore, element_q_table, fit_streamed_pca, fraction_over
from jaxuft.uq import PCA, element_limits, soap_descriptor

SPECIES = ["H", "Li", "C", "N", "O", "Cl", "Co"]


class CountingDescriptor:
    """A SOAP that counts the frames it computes (to see the cache at work)."""

    def __init__(self, soap):
        self.soap, self.calls = soap, 0

    def settings(self):
        return self.soap.settings()

    def compute_iter(self, frames):
        for x in self.soap.compute_iter(frames):
            self.calls += 1
            yield x


@pytest.fixture(scope="module")
def small(paper_data, tmp_path_factory):
    soap = soap_descriptor(SPECIES, r_cut=4.0, n_max=3, l_max=2, sigma=0.5)
    desc = CountingDescriptor(soap)
    store = DescriptorStore(desc, tmp_path_factory.mktemp("cache"), dtype="float64", show_progress=False)
    train = store.get(paper_data / "chclca" / "train" / "naive" / "N-50.xyz", max_frames=3)
    test = store.get(paper_data / "chclca" / "long" / "N-50.xyz", max_frames=2)
    return soap, desc, store, train, test


def test_cache_is_reused_and_equals_direct_descriptors(small, paper_data):
    soap, desc, store, train, _ = small
    calls = desc.calls
    again = store.get(paper_data / "chclca" / "train" / "naive" / "N-50.xyz", max_frames=3)
    assert desc.calls == calls  # read back, not recomputed
    frames = read_frames(paper_data / "chclca" / "train" / "naive" / "N-50.xyz")[:3]
    np.testing.assert_allclose(np.asarray(again.array), soap.compute(frames), rtol=0, atol=0)
    np.testing.assert_array_equal(again.frame_sizes, [197, 197, 197])
    np.testing.assert_array_equal(again.numbers, np.concatenate([a.numbers for a in frames]))
    store.get(paper_data / "chclca" / "train" / "naive" / "N-50.xyz", max_frames=2)
    assert desc.calls == calls + 2  # another selection is another entry


def test_streamed_pca_equals_exact_pca(small):
    _, _, _, train, test = small
    X, Y = np.asarray(train.array), np.asarray(test.array)
    p = fit_streamed_pca([train], n_components=5, chunk_rows=100, tol=1e-12, show_progress=False)
    ref = PCA(5, method="svd").fit(X)
    np.testing.assert_allclose(p.explained_variance_ratio_, ref.explained_variance_ratio_, rtol=1e-9)
    np.testing.assert_allclose(p.explained_variance_, ref.explained_variance_, rtol=1e-9)
    np.testing.assert_allclose(np.abs(p.components_ @ ref.components_.T), np.eye(5), atol=1e-6)
    np.testing.assert_allclose(p.q_residual_of(test), ref.q_residual(Y), rtol=1e-7)
    # two sources at once = their rows stacked
    both = fit_streamed_pca([train, test], n_components=3, tol=1e-12, show_progress=False)
    ref2 = PCA(3, method="svd").fit(np.concatenate([X, Y]))
    np.testing.assert_allclose(both.explained_variance_ratio_, ref2.explained_variance_ratio_, rtol=1e-9)


def test_q_per_element_and_fraction_over_limit(small):
    _, _, _, train, test = small
    p = fit_streamed_pca([train], n_components=5, show_progress=False)
    q_train, q_test = p.q_residual_of(train), p.q_residual_of(test)
    limits = element_limits(q_train, train.numbers)
    table = element_q_table(q_test, test.numbers, limits)
    assert set(table) == set(SPECIES)
    for sym, z in (("H", 1), ("Cl", 17), ("O", 8)):
        t = q_train[train.numbers == z]
        lim = t.mean() + 2 * t.std()
        v = q_test[test.numbers == z]
        assert table[sym]["limit"] == pytest.approx(lim, rel=1e-12)
        assert table[sym]["mean"] == pytest.approx(v.mean(), rel=1e-12)
        assert table[sym]["fraction_over"] == pytest.approx(np.mean(v > lim))
    lims = {z: q_train[train.numbers == z].mean() + 2 * q_train[train.numbers == z].std() for z in np.unique(train.numbers)}
    expect = np.mean([q > lims[z] for q, z in zip(q_test, test.numbers)])
    assert fraction_over(q_test, test.numbers, limits) == pytest.approx(expect)


def test_paper_explained_variance_n50_plus_ft5(paper_data, tmp_path):
    """The paper's explained-variance figure: PCA(5) of per-atom SOAP (r_cut 5, n_max 8, l_max 6, sigma 0.375,
    periodic, 7 species) on train/naive/N-50 + train/periodic/FT5 (~1 min on 2 cores)."""
    soap = soap_descriptor(SPECIES, r_cut=5.0, n_max=8, l_max=6, sigma=0.375, periodic=True)
    store = DescriptorStore(soap, tmp_path, show_progress=False)
    d = paper_data / "chclca" / "train"
    sources = [store.get(d / "naive" / "N-50.xyz"), store.get(d / "periodic" / "FT5.xyz")]
    assert sources[0].array.shape == (50 * 197, 11172)
    p = fit_streamed_pca(sources, n_components=5, show_progress=False)
    assert np.round(100 * p.explained_variance_ratio_, 2).tolist() == [23.00, 18.82, 11.64, 8.59, 6.86]
