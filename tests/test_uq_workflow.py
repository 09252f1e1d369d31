"""The Q-residual workflow: descriptors -> PCA -> tables, the `qres` CLI, plots, aggregation."""

import argparse
import csv
import json

import numpy as np
import pytest
from ase import Atoms

from jaxuft.models.pair import morse_config, morse_params
from jaxuft.potential import Potential
from jaxuft.uq import ModelDescriptor, PCA, per_element, per_structure, per_structure_element, plots, soap_descriptor
from jaxuft.uq.analysis import element_table, fit_qres, frame_table, score_frames
from jaxuft.uq.cli import main, register


def liquid_frames(n_frames, seed, n_atoms=14, box=6.0, squeeze=1.0):
    """Small periodic H/O boxes with a minimum distance (``squeeze`` < 1 packs them denser)."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n_frames):
        sym = ["O", "H", "H"] * (n_atoms // 3) + ["H"] * (n_atoms % 3)
        pos = []
        while len(pos) < len(sym):
            p = rng.uniform(0, box * squeeze, size=3)
            if all(np.linalg.norm((d := p - q) - box * squeeze * np.round(d / (box * squeeze))) > 0.9 * squeeze
                   for q in pos):  # minimum image: periodic neighbours count too
                pos.append(p)
        frames.append(Atoms(sym, positions=pos, cell=[box * squeeze] * 3, pbc=True))
    return frames


def test_aggregation():
    q = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    z = np.array([1, 8, 1, 8, 8])
    pe = per_element(q, z)
    assert pe["H"]["mean"] == 2.0 and pe["O"]["max"] == 5.0 and pe["O"]["count"] == 3
    np.testing.assert_allclose(per_structure(q, [2, 3], "mean"), [1.5, 4.0])
    np.testing.assert_allclose(per_structure(q, [2, 3], "max"), [2.0, 5.0])
    symbols, table = per_structure_element(q, z, [2, 3])
    assert symbols == ["H", "O"]
    np.testing.assert_allclose(table, [[1.0, 2.0], [3.0, 4.5]])
    with pytest.raises(ValueError, match="frame sizes"):
        per_structure(q, [2, 2])


def test_fit_and_score_with_model_descriptors():
    pot = Potential(morse_config([1, 8], r_max=4.0), morse_params(2), dtype="float64")
    desc = ModelDescriptor(pot, name="morse")
    train, test = liquid_frames(6, 0), liquid_frames(3, 1, squeeze=0.8)
    fit = fit_qres(desc, train, n_components=3)
    assert fit.pca.metadata["descriptor"]["kind"] == "model"
    np.testing.assert_allclose(fit.q_train, fit.pca.q_residual(pot.descriptors(train)), rtol=1e-10)
    res = score_frames(fit.pca, desc, test)
    np.testing.assert_allclose(res["q"], fit.pca.q_residual(pot.descriptors(test)), rtol=1e-10)
    table = element_table(res, fit.limits)
    assert set(table) == {"H", "O"} and 0.0 <= table["H"]["fraction_over"] <= 1.0
    ft = frame_table(res, fit.limits)
    assert ft["mean_q"].shape == (3,) and ft["flag"].dtype == bool
    # denser boxes sit further from the training data than the training data itself
    assert np.mean(res["q"]) > np.mean(fit.q_train)


def test_cli_fit_and_score(tmp_path):
    import ase.io

    train, test = liquid_frames(5, 2), liquid_frames(3, 3, squeeze=0.85)
    ase.io.write(tmp_path / "train.xyz", train)
    ase.io.write(tmp_path / "test.xyz", test)
    pca_file = tmp_path / "qres" / "pca.npz"
    assert main(["qres", "fit", "--descriptor", "soap", "--r-cut", "3.0", "--n-max", "3", "--l-max", "2",
                 "--sigma", "0.5", "--n-components", "4", "--quiet", str(tmp_path / "train.xyz"), "-o", str(pca_file)]) == 0
    pca = PCA.load(pca_file)
    meta = pca.metadata
    assert meta["descriptor"]["kind"] == "soap" and meta["descriptor"]["species"] == ["H", "O"]
    assert set(meta["element_limits"]["limit"]) == {"H", "O"}
    assert pca.extra_arrays["train_scores"].shape == (5 * 14, 4)
    out = tmp_path / "scores"
    assert main(["qres", "score", str(pca_file), str(tmp_path / "test.xyz"), "-o", str(out), "--quiet"]) == 0
    for name in ("per_element.csv", "per_frame.csv", "scores.npz", "summary.json",
                 "pc_scatter.png", "q_timeseries.png", "q_distributions.png"):
        assert (out / name).stat().st_size > 0, name
    rows = list(csv.DictReader(open(out / "per_element.csv")))
    assert {r["element"] for r in rows} == {"H", "O"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_frames"] == 3
    # the CLI's Q equals the Python API's (on the frames as written: extxyz rounds positions)
    desc = soap_descriptor(["H", "O"], 3.0, 3, 2, 0.5, True)
    q = pca.q_residual(desc.compute(ase.io.read(tmp_path / "test.xyz", ":")))
    np.testing.assert_allclose(np.load(out / "scores.npz")["q"], q, rtol=1e-10)


def test_register_adds_qres():
    parser = argparse.ArgumentParser(prog="jaxuft")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["qres", "fit", "--descriptor", "model", "--model", "m", "a.xyz", "-o", "p.npz"])
    assert args.func.__name__ == "cmd_fit" and args.descriptor == "model" and args.n_components == 5
    args = parser.parse_args(["qres", "fit", "--n-components", "0.95", "a.xyz", "-o", "p"])
    assert args.n_components == 0.95
    args = parser.parse_args(["qres", "score", "p.npz", "f.xyz", "-o", "out"])
    assert args.func.__name__ == "cmd_score"
    with pytest.raises(SystemExit):
        parser.parse_args(["qres", "fit", "--n-components", "-2", "a.xyz", "-o", "p"])


def test_plots(tmp_path):
    from jaxuft.uq import ElementLimits

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(200, 5)), rng.normal(loc=1.0, size=(150, 5))
    assert plots.pc_scatter({"A": a, "B": b}, tmp_path / "s.png", explained_ratio=[0.5, 0.2]).stat().st_size > 0
    assert plots.pc_scatter({"A": a, "B": b}, tmp_path / "d.png", density=True).stat().st_size > 0
    q = rng.gamma(2.0, size=300)
    z = np.array([1, 8, 6] * 100)
    lim = ElementLimits.from_values(q, z)
    symbols, table = per_structure_element(q, z, [30] * 10)
    assert plots.q_timeseries(np.arange(10) * 50.0, table, symbols, tmp_path / "t.png", limits=lim, xlabel="time (ps)").exists()
    assert plots.q_distributions({"train": (q, z), "test": (q * 2, z)}, tmp_path / "h.png", limits=lim).exists()


def test_score_frames_multi_equals_separate_scoring():
    """One descriptor pass scored under several PCAs = score_frames under each."""
    from jaxuft.uq.analysis import score_frames_multi

    pot = Potential(morse_config([1, 8], r_max=4.0), morse_params(2), dtype="float64")
    desc = ModelDescriptor(pot, name="morse")
    a, b = liquid_frames(4, 0), liquid_frames(3, 1)
    pcas = {"a": fit_qres(desc, a, n_components=2).pca, "b": fit_qres(desc, b, n_components=2).pca}
    multi = score_frames_multi(pcas, desc, a + b)
    for k, p in pcas.items():
        one = score_frames(p, desc, a + b)
        for key in ("q", "t2", "scores", "numbers", "frame_sizes"):
            np.testing.assert_allclose(multi[k][key], one[key], rtol=1e-12)
