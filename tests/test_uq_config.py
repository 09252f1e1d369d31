"""QResConfig: pydantic settings of `jaxuft qres fit`, flags derived from it, --config FILE, one-line errors."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
from ase.build import bulk

from jaxuft.config import ConfigError, load_config, validate_config
from jaxuft.uq import PCA
from jaxuft.uq.cli import main, register
from jaxuft.uq.config import QResConfig, config_from_args


def _parser():
    parser = argparse.ArgumentParser(prog="jaxuft")
    register(parser.add_subparsers(dest="command"))
    return parser


def test_every_field_has_a_flag_and_defaults_match():
    parser = _parser()
    args = parser.parse_args(["qres", "fit", "a.xyz", "-o", "p.npz"])
    defaults = QResConfig()
    for name in QResConfig.model_fields:
        assert getattr(args, name) == getattr(defaults, name), name
    assert config_from_args(args) == defaults
    help_text = parser._subparsers._group_actions[0].choices["qres"]._subparsers._group_actions[0].choices["fit"].format_help()
    for name in QResConfig.model_fields:
        assert f"--{name.replace('_', '-')}" in help_text, name
    assert "--no-periodic" in help_text and "--scale" in help_text and "--config" in help_text


def test_flags_parse_and_validate_at_parse_time(capsys):
    parser = _parser()
    args = parser.parse_args(["qres", "fit", "a.xyz", "-o", "p", "--no-periodic", "--scale", "--species", "O", "H",
                              "--n-components", "0.9", "--n-max", "3", "--descriptor", "model", "--model", "m"])
    cfg = config_from_args(args)
    assert (cfg.periodic, cfg.scale, cfg.species, cfg.n_components, cfg.n_max) == (False, True, ["O", "H"], 0.9, 3)
    assert cfg.descriptor == "model" and cfg.model == "m" and isinstance(args.n_components, float)
    assert config_from_args(parser.parse_args(["qres", "fit", "a", "-o", "p", "--n-components", "7"])).n_components == 7
    for bad, field, words in ((["--n-max", "0"], "--n-max", "greater than or equal to 1"),
                              (["--n-components", "-2"], "--n-components", "positive integer"),
                              (["--n-components", "1.5"], "--n-components", "fraction in (0, 1)"),
                              (["--species", "H", "Qq"], "--species", "unknown chemical symbol(s) 'Qq'"),
                              (["--sigma", "wide"], "--sigma", "invalid float value"),
                              (["--dtype", "float16"], "--dtype", "'float32' or 'float64'")):
        with pytest.raises(SystemExit):
            parser.parse_args(["qres", "fit", "a.xyz", "-o", "p", *bad])
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert f"argument {field}" in err and words in err, err


def test_config_file_errors_name_each_field_on_one_line(tmp_path):
    bad = tmp_path / "qres.yaml"
    bad.write_text("n_maxx: 3\nsigma: wide\nr_cut: 0.5\n")
    with pytest.raises(ConfigError) as exc:
        load_config(QResConfig, bad)
    lines = str(exc.value).splitlines()
    assert len(lines) == 3, lines
    assert any(line.startswith(f"{bad}: n_maxx: unknown field") for line in lines)
    assert any(line.startswith(f"{bad}: sigma: ") and "valid number" in line for line in lines)
    assert any(line.startswith(f"{bad}: r_cut: ") and "greater than 1" in line for line in lines)
    with pytest.raises(ConfigError, match=r"^qres: n_components: must be a positive integer"):
        validate_config(QResConfig, {"n_components": 0}, source="qres")
    with pytest.raises(ConfigError, match=r"^qres: scale: Input should be a valid boolean"):
        validate_config(QResConfig, {"scale": "maybe"}, source="qres")


def test_jaxuft_config_validate_and_schema_know_qres(tmp_path, capsys):
    from jaxuft.cli import main as jaxuft_main

    good = tmp_path / "ok.toml"
    good.write_text('n_max = 3\nspecies = ["Na", "Cl"]\nn_components = 0.9\n')
    assert jaxuft_main(["config", "validate", "--kind", "qres", str(good)]) == 0
    assert "valid qres config" in capsys.readouterr().out
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"l_max": "six"}))
    rc = jaxuft_main(["config", "validate", "--kind", "qres", str(bad)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "l_max: Input should be a valid integer" in err[0], err
    for kind in ("qres", "md", "finetune"):
        assert jaxuft_main(["config", "schema", kind]) == 0
        schema = json.loads(capsys.readouterr().out)
        assert schema["additionalProperties"] is False and schema["properties"], kind
    assert set(QResConfig.model_fields) <= set(json.loads(json.dumps(QResConfig.model_json_schema()))["properties"])


def _nacl(n=3):
    frames = []
    for seed in range(n):
        a = bulk("NaCl", "rocksalt", a=5.64, cubic=True)
        a.rattle(0.05, seed=seed)
        frames.append(a)
    return frames


def test_fit_with_config_file_flags_override_and_manifest(tmp_path, capsys):
    from ase.io import write

    train = tmp_path / "train.xyz"
    write(train, _nacl())
    cfg_file = tmp_path / "qres.yaml"
    cfg_file.write_text("n_max: 2\nl_max: 1\nr_cut: 3.0\nn_components: 3\nsigma: 0.5\n")
    out = tmp_path / "pca.npz"
    assert main(["qres", "fit", str(train), "-o", str(out), "--config", str(cfg_file), "--n-components", "2",
                 "--quiet"]) == 0
    pca = PCA.load(out)
    saved = pca.metadata["qres_config"]
    assert saved == QResConfig(n_max=2, l_max=1, r_cut=3.0, sigma=0.5, n_components=2).model_dump(mode="json")
    assert pca.n_components_ == 2  # the flag beat the file
    d = pca.metadata["descriptor"]
    assert (d["n_max"], d["l_max"], d["r_cut"], d["sigma"]) == (2, 1, 3.0, 0.5) and d["species"] == ["Na", "Cl"]
    # the saved settings are a valid config: refit from them gives the same PCA
    again = tmp_path / "again.json"
    again.write_text(json.dumps(saved))
    out2 = tmp_path / "pca2.npz"
    assert main(["qres", "fit", str(train), "-o", str(out2), "--config", str(again), "--quiet"]) == 0
    np.testing.assert_allclose(PCA.load(out2).components_, pca.components_, atol=1e-10)
    # a bad config file stops before any work, with one line per field
    cfg_file.write_text("n_max: 2\nlmax: 1\n")
    with pytest.raises(SystemExit) as exc:
        main(["qres", "fit", str(train), "-o", str(tmp_path / "no.npz"), "--config", str(cfg_file), "--quiet"])
    msg = str(exc.value.code)
    assert msg.startswith("error: ") and f"{cfg_file}: lmax: unknown field" in msg and "\n" not in msg
    assert not (tmp_path / "no.npz").exists()
