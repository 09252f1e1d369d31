"""Parameter groups declared by the model families select the same leaves as the old name heuristics.

``jaxuft/models/{mace,nequip,pair}.py`` declare ``param_groups``; freezing and the per-group
learning rates use them.  For every freeze spec the declared groups must choose exactly the
leaves the regex heuristics chose (MACE with its real leaf names, SevenNet-0 with its real
params when cached, the Morse pair model).
"""

from __future__ import annotations

import numpy as np
import pytest

from jaxuft.finetune.params import heuristic_groups, lr_group, param_groups, select_trainable

SPECS = ["none", "readouts", "trunk", "linear-readouts", "freeze:embedding"]


def _same_selection(config, params, n_layers):
    declared = param_groups(config, params)
    guessed = heuristic_groups(params, len(config["atomic_numbers"]))
    assert declared.source == "family" and guessed.source == "heuristic"
    assert len(declared.layers) == len(guessed.layers) == n_layers
    assert set(declared.buffers) == set(guessed.buffers)
    for spec in SPECS + [f"layers:{k}" for k in range(n_layers + 1)]:
        try:
            want = select_trainable(spec, config, params, guessed)
        except Exception as exc:  # the same spec must fail the same way
            with pytest.raises(type(exc)):
                select_trainable(spec, config, params, declared)
            continue
        assert select_trainable(spec, config, params, declared) == want, spec
    return declared


def mace_like_params(n_layers=2, n_species=3):
    """A MACE params dict with the leaf names ``jaxuft/models/mace.py`` creates (shapes are irrelevant here)."""
    z = np.zeros(2)
    p = {"node_embedding": z, "atomic_energies": np.zeros((1, n_species)), "scale": np.ones(1), "shift": np.zeros(1)}
    for i in range(n_layers):
        for leaf in ("linear_up", "radial_mlp.0", "radial_mlp.1", "radial_mlp.2", "radial_mlp.3", "linear", "skip_tp"):
            p[f"interactions_{i}.{leaf}"] = z
        for leaf in ("contractions.0.weights_max", "contractions.0.weights_0", "contractions.1.weights_max", "linear"):
            p[f"products_{i}.{leaf}"] = z
    p["readouts_0.linear"] = z
    p[f"readouts_{n_layers - 1}.linear_1"] = z
    p[f"readouts_{n_layers - 1}.linear_2"] = z
    return p


def test_mace_declared_groups_match_heuristics():
    config = {"family": "mace", "atomic_numbers": [1, 6, 8], "layers": [{}, {}]}
    g = _same_selection(config, mace_like_params(), 2)
    assert g.e0 == "atomic_energies"
    assert lr_group("readouts_1.linear_2", g) == "readouts" and lr_group("products_0.linear", g) == "trunk"


def test_mace_real_model_declared_groups_match_heuristics(tmp_path):
    mr = pytest.importorskip("mace_reference")
    mr.skip_without_mace()
    import jaxuft

    pot = jaxuft.load(jaxuft.convert(mr.build_model("tiny", seed=1, dtype="float64"), tmp_path / "m"), dtype="float64")
    _same_selection(pot.config, pot.params, len(pot.config["layers"]))


def test_sevennet_declared_groups_match_heuristics():
    import jaxuft

    try:
        pot = jaxuft.load("sevennet-0")
    except Exception as exc:
        pytest.skip(f"SevenNet-0 unavailable ({str(exc).splitlines()[0]}); run `jaxuft fetch sevennet-0`")
    g = _same_selection(pot.config, pot.params, 5)
    assert g.e0 == "shift" and set(g.buffers) == {"scale", "shift"}
    assert lr_group("readout_out/0e", g) == "readouts" and lr_group("layer_3_radial_mlp/w0", g) == "trunk"


def test_pair_declared_groups_match_heuristics():
    from jaxuft.models.pair import builtin_morse

    config, params = builtin_morse([29, 47])
    g = _same_selection(config, params, 0)
    assert g.e0 == "e0" and select_trainable("none", config, params, g) == ["D", "a", "r0"]
