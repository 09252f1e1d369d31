"""The command line under bad conditions (issue 11.2/11.5/11.6): outputs checked before any work,
atomic writes, flag wording, Ctrl-C, strict JSON, unknown elements in ``qres score``."""

from __future__ import annotations

import errno
import json
import os

import pytest
from ase.build import bulk, molecule
from ase.io import read, write

from conftest import molecule_ethanol, rattled_bulk
from jaxuft.checkpoints.format import save_model
from jaxuft.cli import main
from jaxuft.models.pair import morse_config, morse_params


@pytest.fixture()
def morse_model(tmp_path):
    return save_model(tmp_path / "morse", morse_config([1, 6, 8, 11, 17], r_max=5.0), {"params": morse_params(5)})


@pytest.fixture()
def frames_file(tmp_path):
    src = tmp_path / "in.xyz"
    write(src, [rattled_bulk(), molecule_ethanol()])
    return src


def _one_line_error(capsys, *needles):
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, err
    return err


def test_predict_output_checked_before_any_work(tmp_path, frames_file, capsys):
    # a model that does not exist: had the model been loaded first, the error would be about it
    (tmp_path / "outdir").mkdir()
    assert main(["predict", "--model", "no-such-model", str(frames_file), "-o", str(tmp_path / "outdir")]) == 2
    _one_line_error(capsys, "-o", "is a directory")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["predict", "--model", "no-such-model", str(frames_file), "-o", str(blocker / "out.xyz")]) == 2
    _one_line_error(capsys, "is not a directory")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_predict_read_only_directory(tmp_path, frames_file, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert main(["predict", "--model", "no-such-model", str(frames_file), "-o", str(ro / "out.xyz")]) == 2
        _one_line_error(capsys, "not writable", "choose another -o")
    finally:
        ro.chmod(0o755)


def test_predict_read_only_filesystem(frames_file, capsys):
    if not os.path.isdir("/proc/self"):
        pytest.skip("no /proc")
    assert main(["predict", "--model", "no-such-model", str(frames_file), "-o", "/proc/self/out.xyz"]) == 2
    _one_line_error(capsys, "cannot write /proc/self/out.xyz")


def test_predict_full_disk_leaves_no_truncated_file(morse_model, frames_file, tmp_path, capsys, monkeypatch):
    import ase.io

    out = tmp_path / "out.xyz"
    out.write_text("previous results\n")
    real_write = ase.io.write

    def full_disk(f, images, **kw):
        real_write(f, images[:1], **kw)  # part of the output reaches the temp file, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ase.io, "write", full_disk)
    assert main(["predict", "--model", str(morse_model), str(frames_file), "-o", str(out), "-q"]) == 2
    _one_line_error(capsys, "No space left on device")
    assert out.read_text() == "previous results\n"  # the old file is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.xyz", "morse", "out.xyz"]  # no temp file left


def test_ctrl_c_is_one_line_and_exit_130(morse_model, frames_file, tmp_path, capsys, monkeypatch):
    from jaxuft.potential import Potential

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(Potential, "predict", interrupted)
    out = tmp_path / "out.xyz"
    assert main(["predict", "--model", str(morse_model), str(frames_file), "-o", str(out), "-q"]) == 130
    _one_line_error(capsys, "interrupted")
    assert not out.exists()


def test_convert_existing_dest_names_the_flag(morse_model, tmp_path, capsys):
    src = tmp_path / "x.model"
    src.write_bytes(b"PK")
    assert main(["convert", str(src), str(morse_model)]) == 2
    err = _one_line_error(capsys, "--overwrite")
    assert "overwrite=True" not in err
    other = tmp_path / "notes"
    other.mkdir()
    (other / "thesis.tex").write_text("...")
    assert main(["convert", str(src), str(other), "--overwrite"]) == 2
    _one_line_error(capsys, "not a jaxuft model directory")
    assert (other / "thesis.tex").exists()


def test_flag_wording_of_library_messages():
    from jaxuft.cli import flag_wording

    assert flag_wording("dest exists (pass overwrite=True to replace it)") == "dest exists (pass --overwrite to replace it)"
    assert flag_wording("pass resume=True") == "pass --resume"
    assert flag_wording("skip with --no-verify / verify=False") == "skip with --no-verify"


def test_tampered_model_cli_error_and_no_verify(morse_model, frames_file, tmp_path, capsys):
    st = morse_model + "/params.safetensors"
    data = bytearray(open(st, "rb").read())
    data[-1] ^= 1
    open(st, "wb").write(bytes(data))
    out = tmp_path / "o.xyz"
    assert main(["predict", "--model", morse_model, str(frames_file), "-o", str(out), "-q"]) == 2
    err = _one_line_error(capsys, "params.safetensors", "--no-verify")
    assert "verify=False" not in err and not out.exists()
    assert main(["predict", "--model", morse_model, str(frames_file), "-o", str(out), "-q", "--no-verify"]) == 0
    assert len(read(out, ":")) == 2


def test_predict_overlap_and_bad_element(morse_model, tmp_path, capsys):
    src = tmp_path / "bad.xyz"
    m = molecule("CH4")
    m.positions[1] = m.positions[0] + [0.1, 0, 0]
    write(src, m)
    out = tmp_path / "o.xyz"
    assert main(["predict", "--model", morse_model, str(src), "-o", str(out), "-q"]) == 2
    _one_line_error(capsys, "0.1 Å apart", "--min-distance")
    assert main(["predict", "--model", morse_model, str(src), "-o", str(out), "-q", "--min-distance", "0.05"]) == 0
    m = molecule("CH4")
    m.numbers[0] = 0  # written as "X": read back as atomic number 0
    write(src, m)
    assert main(["predict", "--model", morse_model, str(src), "-o", str(out), "-q"]) == 2
    _one_line_error(capsys, "atomic number 0, outside 1-118")


def test_info_prints_strict_json(morse_model, capsys):
    assert main(["info", morse_model]) == 0

    def refuse(name):
        raise ValueError(f"non-strict JSON constant {name}")

    info = json.loads(capsys.readouterr().out, parse_constant=refuse)
    assert info["family"] == "pair" and info["n_params"] == 80


def test_qres_score_unknown_element_is_a_clear_error(tmp_path, capsys):
    train = tmp_path / "train.xyz"
    frames = []
    for seed in range(3):
        a = bulk("NaCl", "rocksalt", a=5.64, cubic=True)
        a.rattle(0.05, seed=seed)
        frames.append(a)
    write(train, frames)
    pca = tmp_path / "pca.npz"
    assert main(["qres", "fit", str(train), "-o", str(pca), "--n-max", "2", "--l-max", "1",
                 "--n-components", "2", "--quiet"]) == 0
    capsys.readouterr()
    other = tmp_path / "kcl.xyz"
    write(other, bulk("KCl", "rocksalt", a=6.3, cubic=True))
    with pytest.raises(SystemExit) as exc:
        main(["qres", "score", str(pca), str(other), "-o", str(tmp_path / "q"), "--no-plots", "--quiet"])
    msg = str(exc.value.code)
    assert "frame 0 contains element(s) K that the PCA" in msg and "SOAP species: Na Cl)" in msg and "Traceback" not in msg
    assert not (tmp_path / "q").exists()
