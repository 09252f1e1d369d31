"""Tests of the converted-model directory format (jaxuft.checkpoints.format)."""

import json
import os
import zipfile

import numpy as np
import pytest

from jaxuft.checkpoints import format as fmt
from jaxuft.checkpoints.format import (
    is_converted_model,
    load_metadata,
    load_model,
    save_model,
    sha256_file,
)
from jaxuft.errors import CheckpointError

CONFIG = {"family": "mace", "r_max": 5.0, "atomic_numbers": [1, 8], "hidden_irreps": "128x0e",
          "nested": {"a": [1, 2], "b": None, "c": True}}


def make_params(rng=np.random.default_rng(0)):
    return {
        "embedding": {"w": rng.normal(size=(2, 8)).astype(np.float32)},
        "interactions": {
            "0": {"linear": {"w": rng.normal(size=(8, 8)), "b": np.float64(0.5)}},
            "1": {"linear": {"w": rng.normal(size=(8, 8))}},
        },
        "atomic_numbers": np.array([1, 8], np.int64),
        "mask": np.array([True, False]),
    }


def assert_tree_equal(a, b):
    assert isinstance(b, dict) and set(a) == set(b)
    for k in a:
        if isinstance(a[k], dict):
            assert_tree_equal(a[k], b[k])
        else:
            x = np.asarray(a[k])
            assert b[k].dtype == x.dtype and b[k].shape == x.shape, k
            np.testing.assert_array_equal(b[k], x)


def test_round_trip(tmp_path):
    dest = tmp_path / "model"
    params = make_params()
    out = save_model(dest, CONFIG, params, metadata={"source": "x.model", "source_sha256": "ab"})
    assert out == str(dest) and sorted(os.listdir(dest)) == ["config.json", "params.safetensors"]
    assert is_converted_model(dest)
    config, loaded = load_model(dest)
    assert config == CONFIG
    assert_tree_equal(params, loaded)
    assert loaded["interactions"]["0"]["linear"]["w"].dtype == np.float64
    assert loaded["embedding"]["w"].dtype == np.float32
    meta = load_metadata(dest)
    assert meta["source"] == "x.model" and meta["source_sha256"] == "ab"
    assert "jaxuft_version" in meta and "created" in meta
    doc = json.loads((dest / "config.json").read_text())
    assert doc["format"] == "jaxuft-model" and doc["format_version"] == 1
    assert (dest / "config.json").read_text().startswith('{\n  "format"')  # indent 2
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temp dirs left


def test_jax_arrays_accepted(tmp_path):
    jnp = pytest.importorskip("jax.numpy")
    save_model(tmp_path / "m", {"family": "mace"}, {"w": jnp.arange(3.0)})
    np.testing.assert_array_equal(load_model(tmp_path / "m")[1]["w"], [0.0, 1.0, 2.0])


def test_overwrite(tmp_path):
    dest = tmp_path / "model"
    save_model(dest, CONFIG, {"w": np.zeros(2)})
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_model(dest, CONFIG, {"w": np.ones(2)})
    np.testing.assert_array_equal(load_model(dest)[1]["w"], np.zeros(2))
    save_model(dest, CONFIG, {"w": np.ones(2)}, overwrite=True)
    np.testing.assert_array_equal(load_model(dest)[1]["w"], np.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    # never replace something that is not a jaxuft model
    other = tmp_path / "precious"
    other.mkdir()
    (other / "thesis.tex").write_text("...")
    with pytest.raises(FileExistsError, match="not a jaxuft model"):
        save_model(other, CONFIG, {"w": np.ones(2)}, overwrite=True)
    assert (other / "thesis.tex").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    save_model(empty, CONFIG, {"w": np.ones(2)}, overwrite=True)
    assert is_converted_model(empty)


@pytest.mark.parametrize("config,params,err", [
    ({"family": "mace", "x": object()}, {"w": np.zeros(1)}, "JSON"),
    ({"family": "mace", "x": float("nan")}, {"w": np.zeros(1)}, "JSON"),
    ({"family": "mace", 1: 2}, {"w": np.zeros(1)}, "not a str"),
    ({"r_max": 5.0}, {"w": np.zeros(1)}, "family"),
    ({"family": "mace", "format": "x"}, {"w": np.zeros(1)}, "reserved"),
    ({"family": "mace"}, {"w": np.array([1.0, np.nan])}, "w contains NaN"),
    ({"family": "mace"}, {"a": {"w": np.array([np.inf])}}, "a/w contains NaN or inf"),
    ({"family": "mace"}, {"a/b": np.zeros(1)}, "without"),
    ({"family": "mace"}, {"a": {}}, "empty dict"),
    ({"family": "mace"}, {"w": np.array(["x"])}, "dtype"),
])
def test_invalid_input_leaves_nothing(tmp_path, config, params, err):
    with pytest.raises((ValueError, TypeError), match=err):
        save_model(tmp_path / "m", config, params)
    assert list(tmp_path.iterdir()) == []


def test_failure_during_write_leaves_nothing(tmp_path, monkeypatch):
    import safetensors.numpy

    def boom(*args, **kwargs):
        open(args[1], "wb").write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.numpy, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        save_model(tmp_path / "m", CONFIG, make_params())
    assert list(tmp_path.iterdir()) == []


def test_failed_overwrite_keeps_old_model(tmp_path, monkeypatch):
    dest = tmp_path / "m"
    save_model(dest, CONFIG, {"w": np.zeros(2)})
    real_rename = os.rename

    def rename(src, dst):
        if os.path.basename(str(src)).startswith(".m.tmp-"):
            raise OSError("rename failed")
        return real_rename(src, dst)

    monkeypatch.setattr(fmt.os, "rename", rename)
    with pytest.raises(OSError, match="rename failed"):
        save_model(dest, CONFIG, {"w": np.ones(2)}, overwrite=True)
    np.testing.assert_array_equal(load_model(dest)[1]["w"], np.zeros(2))
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_corrupt_safetensors(tmp_path):
    dest = tmp_path / "m"
    save_model(dest, CONFIG, make_params())
    st = dest / "params.safetensors"
    data = st.read_bytes()
    st.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(CheckpointError, match="params.safetensors is corrupt or truncated"):
        load_model(dest)
    st.write_bytes(data[:8] + b"{garbage" + data[16:])  # broken header
    with pytest.raises(CheckpointError, match="corrupt"):
        load_model(dest)
    st.write_bytes(b"\xff" * 8 + data[8:])  # absurd header length
    with pytest.raises(CheckpointError, match="corrupt"):
        load_model(dest)
    st.unlink()
    with pytest.raises(CheckpointError, match="params.safetensors is missing"):
        load_model(dest)


def test_nan_in_file_names_parameter(tmp_path):
    from safetensors.numpy import save_file

    dest = tmp_path / "m"
    save_model(dest, CONFIG, {"a": {"w": np.zeros(3)}})
    save_file({"a/w": np.array([0.0, np.nan, 1.0])}, str(dest / "params.safetensors"))
    with pytest.raises(CheckpointError, match="parameter a/w contains NaN or inf"):
        load_model(dest)


def test_bad_config(tmp_path):
    dest = tmp_path / "m"
    save_model(dest, CONFIG, {"w": np.zeros(1)})
    cfg = dest / "config.json"
    cfg.write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json is corrupt"):
        load_model(dest)
    assert not is_converted_model(dest)
    cfg.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(CheckpointError, match="not a jaxuft model config"):
        load_model(dest)
    cfg.write_text(json.dumps({"format": "jaxuft-model", "format_version": 99, "family": "x"}))
    with pytest.raises(CheckpointError, match="upgrade jaxuft"):
        load_model(dest)
    cfg.unlink()
    with pytest.raises(CheckpointError, match="config.json is missing"):
        load_model(dest)
    with pytest.raises(CheckpointError, match="no such model directory"):
        load_model(tmp_path / "nope")


def test_torch_checkpoint_given_to_load_model(tmp_path):
    src = tmp_path / "model.pt"
    with zipfile.ZipFile(src, "w") as zf:
        zf.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    with pytest.raises(CheckpointError, match=r"convert it first: jaxuft convert .*model.pt DEST"):
        load_model(src)
    assert not is_converted_model(src)


def test_sha256_file(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"abc")
    assert sha256_file(p) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
