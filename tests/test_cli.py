"""The command line: convert and predict end to end, and what bad input does to them."""

from __future__ import annotations

import numpy as np
import pytest
from ase.io import read, write

from conftest import molecule_ethanol, rattled_bulk
from test_torch_pickle import OsSystem, write_checkpoint

from jaxuft.checkpoints.format import save_model
from jaxuft.cli import main
from jaxuft.models.pair import morse_config, morse_params


@pytest.fixture()
def morse_model(tmp_path):
    dest = tmp_path / "morse"
    save_model(dest, morse_config([1, 6, 8, 11, 17], r_max=5.0), {"params": morse_params(5)})
    return dest


def test_predict_writes_ase_readable_results(morse_model, tmp_path, capsys):
    frames = [rattled_bulk(), molecule_ethanol()]
    src = tmp_path / "in.xyz"
    write(src, frames)
    out = tmp_path / "out.xyz"
    assert main(["predict", "--model", str(morse_model), "--dtype", "float64", str(src), "-o", str(out), "-q"]) == 0
    got = read(out, ":")
    assert len(got) == 2
    import jaxuft

    pot = jaxuft.load(morse_model, dtype="float64")
    for a, g in zip(frames, got):
        ref = pot.predict(a)
        assert abs(g.get_potential_energy() - ref["energy"]) < 1e-7
        np.testing.assert_allclose(g.get_forces(), ref["forces"], atol=1e-7)  # extxyz keeps 8 decimals
    np.testing.assert_allclose(got[0].get_stress(), pot.predict(frames[0])["stress"], atol=1e-7)


def test_convert_refuses_malicious_checkpoint_and_leaves_nothing(tmp_path, capsys):
    sentinel = tmp_path / "PWNED"
    evil = tmp_path / "evil.model"
    write_checkpoint(evil, OsSystem(f"touch {sentinel}"))
    dest = tmp_path / "converted"
    assert main(["convert", str(evil), str(dest)]) == 2
    err = capsys.readouterr().err
    assert "system" in err and "Nothing was executed" in err
    assert not dest.exists() and not sentinel.exists()
    assert not list(tmp_path.glob("converted*"))


def test_convert_rejects_non_checkpoints(tmp_path, capsys):
    junk = tmp_path / "junk.model"
    junk.write_text("not a model")
    assert main(["convert", str(junk), str(tmp_path / "d")]) == 2
    assert "zip" in capsys.readouterr().err.lower()
    assert not (tmp_path / "d").exists()


def test_predict_unknown_element_is_a_clear_error(morse_model, tmp_path, capsys):
    from ase.build import bulk

    src = tmp_path / "cu.xyz"
    write(src, bulk("Cu", "fcc", a=3.6))
    assert main(["predict", "--model", str(morse_model), str(src), "-o", str(tmp_path / "o.xyz"), "-q"]) == 2
    assert "Cu" in capsys.readouterr().err
    assert not (tmp_path / "o.xyz").exists()


def test_load_of_missing_model_says_how(tmp_path):
    import jaxuft

    with pytest.raises(FileNotFoundError, match="jaxuft convert"):
        jaxuft.load(tmp_path / "nope")


@pytest.mark.reference
def test_convert_then_predict_real_mace(tmp_path, capsys):
    """A mace-torch file through the CLI, as a user would (no torch in this process)."""
    import sys

    import mace_reference as mr

    mr.skip_without_mace()
    model = mr.build_model("tiny", seed=1, dtype="float64")
    dest = tmp_path / "tiny"
    assert main(["convert", str(model), str(dest)]) == 0
    assert "torch" not in sys.modules
    src = tmp_path / "in.xyz"
    write(src, [molecule_ethanol()])
    out = tmp_path / "out.xyz"
    assert main(["predict", "--model", str(dest), "--dtype", "float64", str(src), "-o", str(out), "-q"]) == 0
    ref = mr.predict(model, [molecule_ethanol()], dtype="float64", repeats=0)[0]
    got = read(out)
    assert abs(got.get_potential_energy() - ref["energy"]) < 1e-9 * abs(ref["energy"])
    # refusing to overwrite an existing model keeps it intact
    assert main(["convert", str(model), str(dest)]) == 2
    assert (dest / "config.json").exists()
