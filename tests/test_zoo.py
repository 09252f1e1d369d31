"""The model zoo: named models, verified downloads, the cache, fail-fast errors, CLI pieces.

Most tests feed the zoo a local SevenNet-0 checkpoint (the reference venv's sevenn package
stands in for "an installed sevenn"); ``test_fetch_sevennet0_from_the_package_index`` really
runs ``pip download`` (skip it offline with JAXUFT_OFFLINE=1).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
import zipfile
from pathlib import Path

import pytest

from jaxuft.checkpoints import zoo
from jaxuft.checkpoints.format import is_converted_model, load_metadata, load_model


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXUFT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="session")
def sevennet0_file():
    """A local copy of the released SevenNet-0 checkpoint, or skip."""
    import sevenn_reference

    candidates = [Path(os.environ.get("JAXUFT_CACHE", Path.home() / ".cache" / "jaxuft"))
                  / "checkpoints" / zoo.MODELS["sevennet-0"].filename]  # fmt: skip
    hits = sorted(sevenn_reference.VENV.glob(f"lib/python*/site-packages/{sevenn_reference.SEVENNET0_MEMBER}"))
    candidates += hits
    for p in candidates:
        if p.is_file() and zoo._sha256(p) == zoo.MODELS["sevennet-0"].sha256:
            return p
    pytest.skip("no local SevenNet-0 checkpoint (run make_venvs.sh sevenn or `jaxuft fetch sevennet-0`)")


@pytest.fixture
def installed_sevenn(monkeypatch, sevennet0_file):
    """Pretend sevenn is installed (its packaged checkpoint is sevennet0_file)."""
    calls = []

    def fake(member):
        calls.append(member)
        return sevennet0_file

    monkeypatch.setattr(zoo, "installed_sevenn_file", fake)
    return calls


def test_models_registry_and_table(cache):
    assert set(zoo.MODELS) == {"sevennet-0", "mace-mp-0b-small", "mace-mp-0-small", "mace-mp-0-medium",
                               "mace-mpa-0-medium"}  # fmt: skip
    assert zoo.DEFAULT_MODEL == "sevennet-0"
    for m in zoo.MODELS.values():
        assert len(m.sha256) == 64 and m.size > 1_000_000 and m.cutoff > 0 and len(m.elements) == 89
        assert m.source.startswith("pypi:") or m.source.startswith("https://github.com/ACEsuit/")
    table = zoo.models_table()
    for name in zoo.MODELS:
        assert name in table
    assert "89 (H-Bi, Ac-Pu)" in table and "10.3 MB" in table and "5 Å" in table
    assert str(cache) in table
    with pytest.raises(KeyError, match="known models"):
        zoo.fetch("no-such-model")


def test_fetch_converts_once_and_loads(cache, installed_sevenn):
    import jaxuft

    d = zoo.fetch("sevennet-0", quiet=True)
    assert d == cache / "models" / "sevennet-0" and is_converted_model(d)
    config, _ = load_model(d)
    assert config["family"] == "nequip"
    assert load_metadata(d)["source_sha256"] == zoo.MODELS["sevennet-0"].sha256
    assert zoo.is_cached("sevennet-0", verify=True)
    stamp = (cache / "models" / "sevennet-0.stamp.json").stat().st_mtime_ns
    t0 = time.perf_counter()
    assert zoo.fetch("sevennet-0", quiet=True) == d
    assert time.perf_counter() - t0 < 5.0
    assert (cache / "models" / "sevennet-0.stamp.json").stat().st_mtime_ns == stamp  # not converted again
    pot = jaxuft.load("sevennet-0")  # by name, through the zoo
    assert pot.config["family"] == "nequip" and pot.cutoff == 5.0


def test_corrupted_cache_is_detected_and_fetched_again(cache, installed_sevenn, capsys):
    d = zoo.fetch("sevennet-0", quiet=True)
    ckpt = zoo.checkpoint_path("sevennet-0")
    good = ckpt.read_bytes()
    # flip bytes in the cached checkpoint and in the converted params
    data = bytearray(good)
    data[len(data) // 2] ^= 0xFF
    ckpt.write_bytes(bytes(data))
    params = d / "params.safetensors"
    pdata = bytearray(params.read_bytes())
    pdata[-10] ^= 0xFF
    params.write_bytes(bytes(pdata))
    assert not zoo.is_cached("sevennet-0", verify=True)
    assert zoo.fetch("sevennet-0") == d
    err = capsys.readouterr().err
    assert "fails its hash check" in err and "corrupted" in err
    assert ckpt.read_bytes() == good
    assert zoo.is_cached("sevennet-0", verify=True)
    # a deleted converted model is rebuilt from the verified checkpoint
    params.unlink()
    assert not zoo.is_cached("sevennet-0")
    zoo.fetch("sevennet-0", quiet=True)
    assert zoo.is_cached("sevennet-0", verify=True)


def test_local_file_and_wheel(cache, sevennet0_file, monkeypatch, tmp_path):
    monkeypatch.setattr(zoo, "installed_sevenn_file", lambda member: None)
    # a file that is not the checkpoint is refused and nothing is cached
    bogus = tmp_path / "bogus.pth"
    bogus.write_bytes(b"not a checkpoint")
    with pytest.raises(zoo.FetchError, match="does not match the recorded checksum"):
        zoo.fetch("sevennet-0", file=bogus, quiet=True)
    assert not zoo.checkpoint_path("sevennet-0").exists()
    # a sevenn wheel (as `pip download` leaves it) is accepted and read
    wheel = tmp_path / "sevenn-0.13.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.write(sevennet0_file, zoo.MODELS["sevennet-0"].member)
    d = zoo.fetch("sevennet-0", file=wheel, quiet=True)
    assert zoo.is_cached("sevennet-0", verify=True) and is_converted_model(d)


def test_unreachable_url_fails_fast(cache, monkeypatch):
    for url in ("http://127.0.0.1:9/mace.model", "http://10.255.255.1/mace.model"):
        m = dataclasses.replace(zoo.MODELS["mace-mp-0-small"], source=url)
        monkeypatch.setitem(zoo.MODELS, "mace-mp-0-small", m)
        t0 = time.perf_counter()
        with pytest.raises(zoo.FetchError) as info:
            zoo.fetch("mace-mp-0-small", timeout=2.0, quiet=True)
        assert time.perf_counter() - t0 < 8.0
        msg = str(info.value)
        assert "jaxuft convert FILE DEST" in msg and "--model DEST" in msg and "--file FILE" in msg
        assert not any((cache / "checkpoints").glob("*.part"))


def test_unreachable_package_index_fails_with_instructions(cache, monkeypatch):
    monkeypatch.setattr(zoo, "installed_sevenn_file", lambda member: None)
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    t0 = time.perf_counter()
    with pytest.raises(zoo.FetchError, match="pip download --no-deps sevenn==0.13.0"):
        zoo.fetch("sevennet-0", timeout=2.0, quiet=True)
    assert time.perf_counter() - t0 < 60.0


@pytest.mark.skipif(os.environ.get("JAXUFT_OFFLINE") == "1", reason="JAXUFT_OFFLINE=1")
def test_fetch_sevennet0_from_the_package_index(cache, monkeypatch):
    """A fresh cache on a machine without sevenn: pip download + wheel + verify + convert."""
    monkeypatch.setattr(zoo, "installed_sevenn_file", lambda member: None)
    d = zoo.fetch("sevennet-0", quiet=True)
    assert zoo.is_cached("sevennet-0", verify=True) and is_converted_model(d)


def test_cli_register(cache, installed_sevenn, capsys):
    parser = argparse.ArgumentParser(prog="jaxuft")
    sub = parser.add_subparsers(dest="command")
    zoo.register(sub)
    args = parser.parse_args(["models"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "sevennet-0" in out and "cached" in out
    args = parser.parse_args(["fetch", "sevennet-0"])
    assert args.func(args) == 0
    assert capsys.readouterr().out.strip() == str(cache / "models" / "sevennet-0")
    args = parser.parse_args(["models"])
    args.func(args)
    row = [line for line in capsys.readouterr().out.splitlines() if line.startswith("sevennet-0")][0]
    assert " yes " in row
    args = parser.parse_args(["fetch", "sevennet-0", "--file", "/nonexistent.pth"])
    assert args.func(args) == 1
    assert "no such file" in capsys.readouterr().err
    stamp = json.loads((cache / "models" / "sevennet-0.stamp.json").read_text())
    assert set(stamp["files"]) == {"config.json", "params.safetensors"}


def test_mace_entry_converts_through_the_mace_converter(cache, monkeypatch):
    """The MACE branch: a local mace-torch file (a random 'tiny' model standing in for a
    release file, its sha256 put in the registry) is verified, converted and loadable."""
    import mace_reference

    import jaxuft

    mace_reference.skip_without_mace()
    src = mace_reference.build_model("tiny", seed=0, dtype="float64")
    m = dataclasses.replace(zoo.MODELS["mace-mp-0-small"], sha256=zoo._sha256(src), size=src.stat().st_size,
                            source="https://invalid.invalid/never-used.model")  # fmt: skip
    monkeypatch.setitem(zoo.MODELS, "mace-mp-0-small", m)
    d = zoo.fetch("mace-mp-0-small", file=src, quiet=True)
    assert zoo.is_cached("mace-mp-0-small", verify=True)
    pot = jaxuft.load("mace-mp-0-small", dtype="float64")
    assert pot.config["family"] == "mace" and d == cache / "models" / "mace-mp-0-small"
