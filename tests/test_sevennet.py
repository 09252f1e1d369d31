"""The nequip family and the SevenNet converter without torch: symmetry, padding, conversion.

Parity with sevenn itself lives in test_sevennet_parity.py.
"""

from __future__ import annotations

import copy

import jax
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule

from jaxuft import Potential
from jaxuft.checkpoints.sevennet import (
    convert_sevennet,
    e3nn_gate_irreps_in,
    linear_weight_to_blocks,
    looks_like_sevennet,
)
from jaxuft.errors import CheckpointError
from jaxuft.models.nequip import (
    ACTIVATIONS,
    Irrep,
    build,
    conv_paths,
    parse_irreps,
    sh_irreps,
    tp_out_irreps,
    xplor_cutoff,
)

jax.config.update("jax_enable_x64", True)

SMALL = {
    "family": "nequip",
    "atomic_numbers": [1, 6, 8, 11, 14, 17],
    "r_max": 4.0,
    "node_irreps": ["8x0e", "8x0e+4x1o+2x2e", "8x0e+4x1o+4x1e", "8x0e"],
    "num_basis": 6,
    "cutoff_function": {"name": "XPLOR", "r_on": 3.2},
    "lmax_sh": 2,
    "sh_parity": -1,
    "normalize_sh": True,
    "radial_hidden": [16],
    "radial_activation": "silu",
    "scalar_activation": {"e": "silu", "o": "tanh"},
    "gate_activation": {"e": "silu", "o": "tanh"},
    "denominators": [7.0, 8.0, 9.0],
}


def _random_params(config, seed=0):
    """Random params with the module's own structure (``eval_shape``: traced, never compiled)."""
    import jax.numpy as jnp

    module = build(config)
    species = jnp.zeros(4, dtype=jnp.int32)
    vec = jnp.ones((3, 3))
    idx = jnp.zeros(3, dtype=jnp.int32)
    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), species, vec, idx, idx,
                            jnp.ones(4, bool), jnp.ones(3, bool))["params"]  # fmt: skip
    rng = np.random.default_rng(seed)
    params = jax.tree_util.tree_map(lambda s: rng.normal(size=s.shape), shapes)
    n = len(config["atomic_numbers"])
    params["radial_frequencies"] = np.arange(1, config["num_basis"] + 1) * np.pi / config["r_max"]
    params["shift"] = rng.normal(-3, 1, n)
    params["scale"] = rng.uniform(0.5, 2, n)
    return params


@pytest.fixture(scope="module")
def small_potential():
    return Potential(SMALL, _random_params(SMALL), dtype="float64")


def _rotation(seed):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    return q * np.sign(np.linalg.det(q))


def test_rotation_translation_permutation(small_potential):
    a = bulk("NaCl", "rocksalt", a=5.0) * (2, 1, 1)
    a.rattle(0.1, seed=1)
    ref = small_potential.predict(a)
    rot = _rotation(3)
    b = a.copy()
    b.set_cell(a.cell[:] @ rot.T, scale_atoms=False)
    b.positions = a.positions @ rot.T + np.array([0.3, -1.2, 2.0])
    perm = np.random.default_rng(0).permutation(len(a))
    b = b[perm]
    out = small_potential.predict(b)
    assert abs(out["energy"] - ref["energy"]) < 1e-10 * abs(ref["energy"])
    np.testing.assert_allclose(out["forces"], ref["forces"][perm] @ rot.T, atol=1e-10)
    s_ref = ref["stress"]
    s33 = np.array([[s_ref[0], s_ref[5], s_ref[4]], [s_ref[5], s_ref[1], s_ref[3]], [s_ref[4], s_ref[3], s_ref[2]]])
    s33 = rot @ s33 @ rot.T
    np.testing.assert_allclose(out["stress"], [s33[0, 0], s33[1, 1], s33[2, 2], s33[1, 2], s33[0, 2], s33[0, 1]],
                               atol=1e-11)  # fmt: skip
    np.testing.assert_allclose(out["energies"], ref["energies"][perm], atol=1e-10)


def test_parity_odd_model_is_not_chiral_blind(small_potential):
    """With O(3) irreps the energy is invariant under inversion too (all outputs even)."""
    m = molecule("CH3CH2OH")
    m.rattle(0.05, seed=2)
    e = small_potential.predict(m)["energy"]
    inv = m.copy()
    inv.positions = -m.positions
    assert abs(small_potential.predict(inv)["energy"] - e) < 1e-10


def test_forces_are_minus_gradient(small_potential):
    m = molecule("CH3CH2OH")
    m.rattle(0.05, seed=4)
    f = small_potential.predict(m)["forces"]
    h = 1e-5
    for i, k in [(0, 0), (3, 2), (7, 1)]:
        p, q = m.copy(), m.copy()
        p.positions[i, k] += h
        q.positions[i, k] -= h
        num = -(small_potential.predict(p)["energy"] - small_potential.predict(q)["energy"]) / (2 * h)
        assert abs(num - f[i, k]) < 1e-6


def test_batching_padding_and_isolated_atoms(small_potential):
    a = bulk("NaCl", "rocksalt", a=5.0) * (2, 1, 1)  # same shape as in the rotation test
    a.rattle(0.1, seed=1)
    m = molecule("H2O")
    one = Atoms("O", positions=[[0, 0, 0]])
    far = Atoms("OO", positions=[[0, 0, 0], [20, 0, 0]])
    single = small_potential.predict(a)
    batch = small_potential.predict([m, a, m, one, far])
    assert abs(batch[1]["energy"] - single["energy"]) < 1e-11
    np.testing.assert_allclose(batch[1]["forces"], single["forces"], atol=1e-11)
    np.testing.assert_allclose(batch[1]["stress"], single["stress"], atol=1e-12)
    assert batch[0]["energy"] == pytest.approx(batch[2]["energy"], abs=1e-12)
    # atoms without neighbours: energies add up, no forces, nothing NaN
    assert np.isfinite(batch[3]["energy"])
    assert abs(batch[4]["energy"] - 2 * batch[3]["energy"]) < 1e-10
    assert np.all(batch[4]["forces"] == 0.0)


def test_descriptors_are_scalar_features_of_every_layer(small_potential):
    m = molecule("H2O")
    d = small_potential.descriptors(m)
    assert d.shape == (3, 8 * 3)  # 8 scalars after each of the 3 layers
    rot = _rotation(7)
    m2 = m.copy()
    m2.positions = m.positions @ rot.T
    np.testing.assert_allclose(small_potential.descriptors(m2), d, atol=1e-10)


def test_xplor_cutoff_is_smooth():
    import jax.numpy as jnp

    r = jnp.linspace(0.5, 5.5, 2001)
    f = xplor_cutoff(r, 4.5, 5.0)
    df = jax.vmap(jax.grad(lambda x: xplor_cutoff(x, 4.5, 5.0)))(r)
    assert float(f[0]) == 1.0 and float(f[-1]) == 0.0
    assert np.all(np.diff(np.asarray(f)) <= 1e-12)
    g = jax.grad(lambda x: xplor_cutoff(x, 4.5, 5.0))
    for r0 in (4.5, 5.0):  # C1: the derivative vanishes on both sides of r_on and at r_cut
        for side in (-1e-7, 1e-7):
            assert abs(float(g(jnp.array(r0 + side)))) < 1e-5
    assert float(jnp.min(df)) > -5.0
    s_, c_, o_ = 4.75**2, 25.0, 4.5**2  # HOOMD's XPLOR formula in r^2
    expected = (c_ - s_) ** 2 * (c_ + 2 * s_ - 3 * o_) / (c_ - o_) ** 3
    np.testing.assert_allclose(float(xplor_cutoff(jnp.array(4.75), 4.5, 5.0)), expected, rtol=1e-12)


def test_activation_constants_are_e3nn_normalize2mom():
    """e3nn's constants are Monte Carlo estimates of E[f(z)^2]^-1/2; check they are close to quadrature."""
    z, w = np.polynomial.hermite_e.hermegauss(200)
    w = w / w.sum()
    for name, (fn, c) in ACTIVATIONS.items():
        exact = float(np.sum(w * np.asarray(fn(z)) ** 2)) ** -0.5
        assert abs(c - exact) < 5e-3 * exact, name


def test_conv_paths_match_sevennet0_weight_counts():
    filt = sh_irreps(2, 1)
    hidden = parse_irreps("128x0e+64x1e+32x2e")
    _, _, n0 = conv_paths(parse_irreps("128x0e"), filt, tp_out_irreps(parse_irreps("128x0e"), filt, 2, False))
    _, mid, n1 = conv_paths(hidden, filt, tp_out_irreps(hidden, filt, 2, False))
    _, _, n4 = conv_paths(hidden, filt, tp_out_irreps(hidden, filt, 0, True))
    assert (n0, n1, n4) == (384, 960, 224)  # weight_nn.layer2 widths of SevenNet-0
    assert sum(m * ir.dim for m, ir in mid) == 3136  # convolution output_mask size
    assert e3nn_gate_irreps_in(hidden) == ((224, Irrep(0, 1)), (64, Irrep(1, 1)), (32, Irrep(2, 1)))


def test_linear_weight_layout():
    """Input-major (mul_in, mul_out) blocks, one per matching pair of irreps entries."""
    ins = parse_irreps("2x0e+1x1e+3x0e")
    outs = parse_irreps("1x1e+2x0e")
    # pairs in order: (0e#0 -> 0e) 2x2, (1e -> 1e) 1x1, (0e#2 -> 0e) 3x2
    flat = np.arange(4 + 1 + 6, dtype=float)
    blocks = linear_weight_to_blocks(flat, ins, outs, "test")
    np.testing.assert_array_equal(blocks["0e"], np.concatenate([np.arange(4).reshape(2, 2), np.arange(5, 11).reshape(3, 2)]))
    np.testing.assert_array_equal(blocks["1e"], [[4.0]])
    with pytest.raises(CheckpointError):
        linear_weight_to_blocks(flat[:-1], ins, outs, "test")


# ---- the released SevenNet-0 checkpoint (from the zoo cache or the reference venv) ------------
def _sevennet0_path():
    import sevenn_reference
    from jaxuft.checkpoints import zoo

    p = zoo.checkpoint_path("sevennet-0")
    if p.is_file():
        return p
    p = sevenn_reference.sevennet0_checkpoint() if sevenn_reference.sevenn_python() else None
    if p is None or not p.is_file():
        pytest.skip("no SevenNet-0 checkpoint: run `jaxuft fetch sevennet-0` or make_venvs.sh sevenn")
    return p


@pytest.fixture(scope="module")
def sevennet0_obj():
    from jaxuft.checkpoints.torch_pickle import read_checkpoint

    return read_checkpoint(_sevennet0_path())


def test_convert_sevennet0(sevennet0_obj):
    assert looks_like_sevennet(sevennet0_obj)
    config, params = convert_sevennet(sevennet0_obj)
    assert config["family"] == "nequip"
    assert config["atomic_numbers"] == sorted(config["atomic_numbers"]) and len(config["atomic_numbers"]) == 89
    assert config["r_max"] == 5.0 and config["cutoff_function"] == {"name": "XPLOR", "r_on": 4.5}
    assert config["node_irreps"] == ["128x0e"] + ["128x0e+64x1e+32x2e"] * 4 + ["128x0e"]
    assert config["sh_parity"] == 1 and config["lmax_sh"] == 2 and config["normalize_sh"] is True
    np.testing.assert_allclose(config["denominators"], [np.sqrt(1295.2495)] * 5, rtol=1e-6)
    assert params["layer_1_radial_mlp"]["w2"].shape == (64, 960)
    assert params["embedding"].shape == (89, 128) and params["embedding"].dtype == np.float32
    n = sum(np.asarray(x).size for x in jax.tree_util.tree_leaves(params))
    sd = sevennet0_obj["model_state_dict"]
    n_sd = sum(np.asarray(v).size for k, v in sd.items()
               if not any(s in k for s in ("output_mask", "_w3j", "denominator", "gate.mul.weight")))  # fmt: skip
    assert n == n_sd  # every weight converted, nothing invented
    # shift is per element, reordered from sevenn's type order to atomic-number order
    type_map = sevennet0_obj["config"]["_type_map"]
    z_h = config["atomic_numbers"].index(1)
    assert params["shift"][z_h] == np.float32(sd["rescale_atomic_energy.shift"][type_map[1]])


@pytest.mark.parametrize(
    "change, message",
    [
        ({"self_connection_type": "nequip"}, "self_connection_type"),
        ({"use_modality": True}, "multi-fidelity"),
        ({"readout_as_fcn": True}, "readout_as_fcn"),
        ({"use_bias_in_linear": True}, "use_bias_in_linear"),
        ({"interaction_type": "other"}, "interaction_type"),
    ],
)
def test_unsupported_variants_are_refused(sevennet0_obj, change, message):
    obj = dict(sevennet0_obj)
    obj["config"] = {**copy.copy(sevennet0_obj["config"]), **change}
    with pytest.raises(CheckpointError, match=message):
        convert_sevennet(obj)


def test_looks_like_sevennet_rejects_other_objects():
    assert not looks_like_sevennet({"model": 1})
    assert not looks_like_sevennet({"config": {}, "model_state_dict": {}})
    assert not looks_like_sevennet([1, 2])
    with pytest.raises(CheckpointError):
        convert_sevennet({"config": {}})


def test_missing_tensor_is_reported(sevennet0_obj):
    obj = dict(sevennet0_obj)
    sd = dict(sevennet0_obj["model_state_dict"])
    del sd["2_self_interaction_2.linear.weight"]
    obj["model_state_dict"] = sd
    with pytest.raises(CheckpointError, match="2_self_interaction_2"):
        convert_sevennet(obj)
