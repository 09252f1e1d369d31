"""Q-residual progress and breakdowns: bars with rate and ETA for fit and score, per-file tables of `qres score`,
and the streamed fit (frames -> descriptors -> covariance) equal to the in-memory one."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from ase.build import bulk

from jaxuft.uq import soap_descriptor
from jaxuft.uq.analysis import fit_qres, score_frames
from jaxuft.uq.cli import main


def _salt(n, seed, rattle=0.05, a=5.64):
    frames = []
    for k in range(n):
        at = bulk("NaCl", "rocksalt", a=a, cubic=True)
        at.rattle(rattle, seed=seed + k)
        frames.append(at)
    return frames


@pytest.fixture(scope="module")
def desc():
    return soap_descriptor(["Na", "Cl"], r_cut=3.5, n_max=2, l_max=1, sigma=0.5)


def test_streamed_fit_equals_in_memory_fit(desc):
    train = _salt(6, 0)
    exact = fit_qres(desc, train, n_components=3)  # small: exact SVD of the stacked matrix
    assert exact.pca.fit_method_ == "svd"
    kept = fit_qres(desc, train, n_components=3, svd_max_elements=0)  # streamed, descriptors kept
    again = fit_qres(desc, train, n_components=3, svd_max_elements=0, keep_bytes=0)  # streamed, computed twice
    for fit in (kept, again):
        assert fit.pca.fit_method_ == "covariance"
        np.testing.assert_allclose(fit.pca.explained_variance_, exact.pca.explained_variance_, rtol=1e-8)
        np.testing.assert_allclose(fit.q_train, exact.q_train, rtol=1e-6, atol=1e-12 * exact.q_train.max())
        np.testing.assert_allclose(np.abs(fit.scores), np.abs(exact.scores), rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(kept.q_train, again.q_train)
    assert kept.limits.to_dict() == again.limits.to_dict()


def test_fit_and_score_show_progress_with_rate_and_eta(desc, monkeypatch, capsys):
    monkeypatch.setenv("JAXUFT_PROGRESS", "1")
    train = _salt(5, 10)
    fit = fit_qres(desc, train, n_components=2, svd_max_elements=0, eigh_max=4, progress=None)
    err = capsys.readouterr().err
    for label in ("descriptors", "PCA eigenpairs", "Q and T²"):
        assert label in err, (label, err[-500:])
    assert "frame/s" in err or "s/frame" in err  # a rate ...
    assert "<" in err  # ... and tqdm's elapsed<remaining
    assert fit.pca.n_iter_ >= 1 and fit.pca.eigen_residual_ < 1e-6  # the subspace path ran (and converged)
    score_frames(fit.pca, desc, _salt(3, 20), progress=None)
    assert "scoring" in capsys.readouterr().err
    # the PCA class streams an in-memory array with its own bar
    from jaxuft.uq import PCA

    X = np.random.default_rng(0).normal(size=(300, 6))
    PCA(2, method="covariance", chunk_size=64, progress=None).fit(X)
    assert "PCA covariance" in capsys.readouterr().err
    # off when asked
    monkeypatch.setenv("JAXUFT_PROGRESS", "0")
    fit_qres(desc, train, n_components=2, progress=True)
    assert capsys.readouterr().err == ""


def test_score_several_files_gives_a_per_file_breakdown(tmp_path, capsys):
    from ase.io import write

    write(tmp_path / "train.xyz", _salt(4, 30))
    near, far = tmp_path / "near.xyz", tmp_path / "far.xyz"
    write(near, _salt(3, 40))
    write(far, _salt(2, 50, rattle=0.25, a=5.3))
    pca = tmp_path / "pca.npz"
    assert main(["qres", "fit", str(tmp_path / "train.xyz"), "-o", str(pca), "--r-cut", "3.5", "--n-max", "2",
                 "--l-max", "1", "--n-components", "2", "--quiet"]) == 0
    out = tmp_path / "q"
    assert main(["qres", "score", str(pca), str(near), str(far), "-o", str(out), "--no-plots"]) == 0
    printed = capsys.readouterr().out
    assert "per file (2 files" in printed and "near.xyz" in printed and "far.xyz" in printed

    summary = json.loads((out / "summary.json").read_text())
    files = summary["per_file"]
    assert [f["file"] for f in files] == [str(near), str(far)] and [f["n_frames"] for f in files] == [3, 2]
    scores = np.load(out / "scores.npz")
    q, sizes = scores["q"], scores["frame_sizes"]
    np.testing.assert_array_equal(scores["frames_per_file"], [3, 2])
    n_near = int(sizes[:3].sum())
    assert files[0]["n_atoms"] == n_near and files[1]["n_atoms"] == int(sizes[3:].sum())
    np.testing.assert_allclose(files[0]["mean_q"], q[:n_near].mean(), rtol=1e-12)
    np.testing.assert_allclose(files[1]["max_q"], q[n_near:].max(), rtol=1e-12)
    assert files[1]["mean_q"] > files[0]["mean_q"]  # the squeezed, hotter file sits further from training
    assert set(files[0]["per_element"]) == {"Na", "Cl"}
    assert sum(f["frames_flagged"] for f in files) == summary["frames_flagged"]
    assert files[0]["per_element"]["Na"]["count"] + files[1]["per_element"]["Na"]["count"] == \
        summary["per_element"]["Na"]["count"]

    rows = list(csv.DictReader(open(out / "per_file.csv")))
    assert [r["file"] for r in rows] == [str(near), str(far)] and int(rows[1]["n_frames"]) == 2
    frames = list(csv.DictReader(open(out / "per_frame.csv")))
    assert [r["file"] for r in frames] == [str(near)] * 3 + [str(far)] * 2
    assert [int(r["frame_in_file"]) for r in frames] == [0, 1, 2, 0, 1]


def test_docs_qres_example_runs(tmp_path, monkeypatch):
    """The Python example in docs/qres.md runs as written (in a scratch directory)."""
    from pathlib import Path

    from jaxuft.uq import PCA

    text = (Path(__file__).resolve().parents[1] / "docs" / "qres.md").read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```python\n")[1:]]
    assert blocks, "docs/qres.md has no python example"
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        exec(compile(block, "docs/qres.md", "exec"), {})
    assert PCA.load(tmp_path / "example_pca.npz").n_components_ == 3
