"""Converted models are validated on load and on convert (issue 11.4): schema, params, sha256 manifest.

Every tampered model of the probe is refused with one clear error naming the file and the field.
"""

from __future__ import annotations

import copy
import json
import logging

import numpy as np
import pytest
from test_sevennet import SMALL, _random_params
from test_torch_pickle import module, module_state, write_checkpoint

import jaxuft
from jaxuft.checkpoints.format import load_model, save_model
from jaxuft.checkpoints.schema import validate_model_config
from jaxuft.errors import CheckpointError
from jaxuft.models.pair import morse_config, morse_params


@pytest.fixture()
def morse_model(tmp_path):
    return save_model(tmp_path / "morse", morse_config([1, 6, 8], r_max=5.0), {"params": morse_params(3)})


@pytest.fixture(scope="module")
def small_nequip(tmp_path_factory):
    return save_model(tmp_path_factory.mktemp("m") / "small", SMALL, {"params": _random_params(SMALL)})


def _edit_config(model_dir, **changes):
    path = f"{model_dir}/config.json"
    doc = json.loads(open(path).read())
    doc.update(changes)
    open(path, "w").write(json.dumps(doc))  # json writes NaN/Infinity for float nan/inf, as a hand edit could


@pytest.mark.parametrize("field,value,expect", [
    ("r_max", -1.0, "r_max: Input should be greater than 0"),
    ("r_max", float("nan"), "r_max: must be a finite number"),
    ("r_max", float("inf"), "r_max: must be a finite number"),
    ("r_max", True, "r_max: must be a number, not true/false"),
    ("r_max", 1e6, "r_max: Input should be less than or equal to 15"),
    ("atomic_numbers", [8, 6, 1], "atomic_numbers: must be sorted ascending"),
    ("atomic_numbers", [0, 6, 8], "atomic_numbers: atomic numbers must be within 1..118"),
    ("family", "transformer", "family: unknown model family 'transformer'"),
    ("rmax", 5.0, "rmax: unknown field"),
])
def test_tampered_config_is_refused_naming_file_and_field(morse_model, field, value, expect):
    _edit_config(morse_model, **{field: value})
    with pytest.raises(CheckpointError, match="was modified after it was saved"):
        jaxuft.load(morse_model)  # the manifest catches any edit first
    with pytest.raises(CheckpointError) as err:
        jaxuft.load(morse_model, verify=False)  # and the schema catches a nonsensical one anyway
    msg = str(err.value)
    assert msg.startswith(f"{morse_model}/config.json: ") and expect in msg, msg


@pytest.mark.parametrize("change,expect", [
    ({"cutoff_function": {"name": "XPLOR", "r_on": 4.5}}, "r_on (4.5 Å) must be below r_max (4.0 Å)"),
    ({"lmax_sh": 10**30}, "lmax_sh: Input should be less than or equal to 8"),
    ({"denominators": [7.0, 0.0, 9.0]}, "denominators[1]: Input should be greater than 0"),
    ({"denominators": [7.0, 9.0]}, "denominators has 2 entries for 3 interaction layers"),
    ({"node_irreps": ["8x0e", "8x0e+4x1q", "8x0e"]}, "node_irreps[1]: cannot parse irreps '8x0e+4x1q'"),
    ({"node_irreps": ["8x0e", "8x0e+4x1000000000000o", "8x0e"]}, "irrep order l=1000000000000 is outside 0..8"),
    ({"radial_hidden": [10**9]}, "radial_hidden[0]: Input should be less than or equal to 4096"),
])
def test_nequip_schema_bounds(change, expect):
    cfg = copy.deepcopy(SMALL)
    cfg.update(change)
    with pytest.raises(CheckpointError) as err:
        validate_model_config(cfg, "m/config.json")
    assert expect in str(err.value) and str(err.value).startswith("m/config.json: "), str(err.value)


def test_params_checked_against_the_config(small_nequip, tmp_path):
    pot = jaxuft.load(small_nequip, dtype="float64")  # the valid model loads
    good = {"params": _random_params(SMALL)}

    def saved(params, name):
        return save_model(tmp_path / name, SMALL, {"params": params})

    p = dict(good["params"], embedding=np.zeros((2, 8)))
    with pytest.raises(CheckpointError, match=r"bad_shape/config.json: parameter embedding has shape \(2, 8\), but "
                                              r"the config implies \(6, 8\)"):
        jaxuft.load(saved(p, "bad_shape"))
    p = {k: v for k, v in good["params"].items() if k != "embedding"}
    with pytest.raises(CheckpointError, match=r"missing/config.json: the params do not match the config: "
                                              r"missing \['embedding'\]"):
        jaxuft.load(saved(p, "missing"))
    p = dict(good["params"], extra=np.zeros(3))
    with pytest.raises(CheckpointError, match=r"unexpected \['extra'\]"):
        jaxuft.load(saved(p, "extra"))
    p = {k: (v * 1e30 if k == "embedding" else v) for k, v in good["params"].items()}
    with pytest.raises(CheckpointError, match=r"parameter embedding holds values up to .*e\+30"):
        jaxuft.load(saved(p, "huge"))
    from ase.build import molecule

    assert np.isfinite(pot.predict(molecule("H2O"))["energy"])


def test_manifest_detects_changed_weights_and_no_verify_skips(morse_model):
    jaxuft.load(morse_model)
    st = morse_model + "/params.safetensors"
    data = bytearray(open(st, "rb").read())
    data[-1] ^= 0x01  # a flipped bit in the last weight: still a valid file, still finite
    open(st, "wb").write(bytes(data))
    with pytest.raises(CheckpointError, match=r"params.safetensors is corrupt or truncated, or was modified after it "
                                              r"was saved .* skip the check with --no-verify / verify=False"):
        jaxuft.load(morse_model)
    assert jaxuft.load(morse_model, verify=False).config["family"] == "pair"


def test_model_saved_before_manifests_loads_unverified_with_one_log_line(morse_model, caplog):
    path = morse_model + "/config.json"
    doc = json.loads(open(path).read())
    del doc["manifest"]
    open(path, "w").write(json.dumps(doc))
    with caplog.at_level(logging.INFO, logger="jaxuft"):
        config, _ = load_model(morse_model)
    assert config == morse_config([1, 6, 8], r_max=5.0)
    lines = [r.getMessage() for r in caplog.records if "manifest" in r.getMessage()]
    assert len(lines) == 1 and "loading it unverified" in lines[0]


def test_invalid_config_json_is_named_not_reported_as_not_a_file(morse_model):
    open(morse_model + "/config.json", "w").write('{"format": "jaxuft-model", "format_ver')
    with pytest.raises(CheckpointError, match=r"morse/config.json is corrupt \(not valid JSON"):
        jaxuft.load(morse_model)


def test_malformed_model_inside_a_checkpoint_is_a_clear_error(tmp_path):
    from jaxuft.checkpoints.convert import convert_to_memory
    from test_torch_pickle import Storage, Tensor

    t = lambda x: Tensor(Storage(np.asarray(x, np.float64), "DoubleStorage"), 0, np.shape(x), (1,) * len(np.shape(x)))
    state = module_state(buffers=[("atomic_numbers", t([1.0, 8.0])), ("r_max", t([5.0])),
                                  ("num_interactions", t([2.0]))])
    src = write_checkpoint(tmp_path / "odd.model", module("mace.modules.models.ScaleShiftMACE", state))
    with pytest.raises(CheckpointError, match=r"odd.model: cannot convert this checkpoint: the model in it is "
                                              r"malformed .*AttributeError"):
        convert_to_memory(src)


# --------------------------------------------------------------------------- real SevenNet-0 checkpoint
def _sevennet_checkpoint():
    from jaxuft.checkpoints import zoo

    path = zoo.checkpoint_path("sevennet-0")
    if not path.is_file():
        pytest.skip(f"SevenNet-0 checkpoint not cached at {path} (run `jaxuft fetch sevennet-0`)")
    return path


@pytest.mark.parametrize("cutoff", [-1.0, 1e6])
def test_convert_refuses_absurd_sevennet_cutoff(monkeypatch, cutoff):
    from jaxuft.checkpoints import convert as conv
    from jaxuft.checkpoints.torch_pickle import read_checkpoint

    src = _sevennet_checkpoint()
    obj = read_checkpoint(src)
    obj["config"]["cutoff"] = cutoff
    monkeypatch.setattr(conv, "read_checkpoint", lambda path: obj)
    with pytest.raises(CheckpointError, match=rf"{src.name} \(converted\): r_max: Input should be"):
        conv.convert_to_memory(src)


def test_convert_refuses_nan_weights(monkeypatch, tmp_path):
    from jaxuft.checkpoints import convert as conv
    from jaxuft.checkpoints.torch_pickle import read_checkpoint

    src = _sevennet_checkpoint()
    obj = read_checkpoint(src)
    key = next(k for k, v in obj["model_state_dict"].items() if k.endswith("weight") and np.asarray(v).size > 4)
    w = np.array(obj["model_state_dict"][key], copy=True)
    w.flat[3] = np.nan
    obj["model_state_dict"][key] = w
    monkeypatch.setattr(conv, "read_checkpoint", lambda path: obj)
    with pytest.raises(CheckpointError, match=rf"{src.name}.*contains NaN or inf"):
        conv.convert(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_damaged_zoo_cache_is_repaired_or_named_with_the_command(tmp_path, monkeypatch):
    import shutil

    from jaxuft.checkpoints import zoo

    src = _sevennet_checkpoint()
    monkeypatch.setenv("JAXUFT_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache" / "checkpoints").mkdir(parents=True)
    shutil.copy(src, zoo.checkpoint_path("sevennet-0"))
    d = zoo.fetch("sevennet-0", quiet=True)
    cfg = d / "config.json"
    cfg.write_text(cfg.read_text()[:200])  # truncated, as after a full disk
    assert zoo.fetch("sevennet-0", quiet=True) == d  # repaired from the verified checkpoint
    assert jaxuft.load("sevennet-0").config["family"] == "nequip"
    cfg.write_text("{")
    zoo.checkpoint_path("sevennet-0").unlink()

    def offline(*args, **kwargs):
        raise zoo.FetchError("the package index cannot be reached")

    monkeypatch.setattr(zoo, "_obtain_checkpoint", offline)
    with pytest.raises(zoo.FetchError) as err:
        zoo.fetch("sevennet-0", quiet=True)
    assert f"rm -rf {d} " in str(err.value) and "jaxuft fetch sevennet-0" in str(err.value)


@pytest.mark.reference
def test_convert_refuses_unparsable_irreps_in_mace_file(tmp_path, monkeypatch):
    import mace_reference as mr

    from jaxuft.checkpoints import convert as conv
    from jaxuft.checkpoints.torch_pickle import read_checkpoint

    mr.skip_without_mace()
    src = mr.build_model("tiny", seed=0, dtype="float64")
    obj = read_checkpoint(src)
    obj.interactions[0].__dict__["target_irreps"] = "16x0e+16x1q"
    monkeypatch.setattr(conv, "read_checkpoint", lambda path: obj)
    with pytest.raises(CheckpointError, match=r"cannot convert this checkpoint.*cannot parse irreps"):
        conv.convert_to_memory(src)
