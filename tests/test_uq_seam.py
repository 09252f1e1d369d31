"""The public model seam: pure functions of ``(module, params, graph)`` equal the Potential's methods,
jit and grad through them, and the Q monitor uses the public name."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase import Atoms

import jaxuft
from jaxuft import potential as potential_module
from jaxuft.models.pair import morse_config, morse_params
from jaxuft.potential import Potential

jax.config.update("jax_enable_x64", True)


def _water_box(seed=0, n_mol=4, box=6.5):
    rng = np.random.default_rng(seed)
    pos, sym = [], []
    for k in range(n_mol):
        o = (np.array([k % 2, (k // 2) % 2, 0.0]) + 0.25) * box / 2 + rng.normal(0, 0.1, 3)
        pos += [o, o + [0.96, 0.0, 0.0], o + [-0.24, 0.93, 0.0]]
        sym += ["O", "H", "H"]
    return Atoms(sym, positions=np.array(pos) + rng.normal(0, 0.03, (3 * n_mol, 3)), cell=[box] * 3, pbc=True)


def _potentials():
    pots = {"morse": Potential(morse_config([1, 8], r_max=4.0), morse_params(2), dtype="float64")}
    from test_sevennet import SMALL, _random_params

    # a two-layer SevenNet-shaped model, small enough to compile in seconds
    config = dict(SMALL, atomic_numbers=[1, 8], node_irreps=["4x0e", "4x0e+2x1o", "4x0e"], lmax_sh=1,
                  radial_hidden=[8], denominators=[7.0, 8.0])
    pots["nequip"] = Potential(config, _random_params(config, seed=3), dtype="float64")
    return pots


@pytest.fixture(scope="module")
def pots():
    return _potentials()


@pytest.mark.parametrize("kind", ["morse", "nequip"])
def test_public_functions_equal_potential_methods(pots, kind):
    pot = pots[kind]
    frames = [_water_box(0), _water_box(1, n_mol=3)]
    graph = pot.graph(frames)
    mod, params = pot.module, pot.params
    n = sum(len(a) for a in frames)

    def both(public, method):
        """The public function and the Potential method, each jitted on its own."""
        return jax.jit(lambda p, g: public(mod, p, g))(params, graph), jax.jit(method)(params, graph)

    efs, ref = both(jaxuft.energy_forces_stress, pot.energy_forces_stress)
    for key in ("energy", "forces", "stress", "node_energy"):
        np.testing.assert_array_equal(np.asarray(efs[key]), np.asarray(ref[key]), err_msg=key)
    e_pub, e_ref = both(jaxuft.energy, pot.energy)
    np.testing.assert_allclose(np.asarray(e_pub), np.asarray(e_ref), rtol=1e-13)
    np.testing.assert_allclose(np.asarray(e_pub), np.asarray(efs["energy"]), rtol=1e-13)
    out, ref_out = both(jaxuft.node_outputs, pot.node_outputs)
    np.testing.assert_array_equal(np.asarray(out["descriptors"]), np.asarray(ref_out["descriptors"]))
    np.testing.assert_array_equal(np.asarray(out["node_energy"]), np.asarray(ref_out["node_energy"]))
    desc, desc_ref = both(jaxuft.node_descriptors, pot.node_descriptors)
    np.testing.assert_array_equal(np.asarray(desc), np.asarray(ref_out["descriptors"]))
    np.testing.assert_array_equal(np.asarray(desc_ref), np.asarray(desc))
    # ... and the host conveniences: predict() and descriptors()
    pred = pot.predict(frames)
    np.testing.assert_allclose([p["energy"] for p in pred], np.asarray(efs["energy"])[:2], rtol=1e-12)
    np.testing.assert_allclose(pot.descriptors(frames), np.asarray(desc)[:n], rtol=1e-12)
    # the energies are not trivially zero, and the old names are the same functions
    assert np.all(np.abs(np.asarray(efs["energy"])[:2]) > 1e-6)
    assert potential_module.energy_fn is jaxuft.energy
    assert potential_module.energy_forces_stress_fn is jaxuft.energy_forces_stress
    assert potential_module._node_outputs is jaxuft.node_outputs


@pytest.mark.parametrize("kind", ["morse", "nequip"])
def test_jit_and_grad_through_energy(pots, kind):
    """The docs/seam.md example: jit + grad w.r.t. positions (= -forces) and params (= finite difference)."""
    pot = pots[kind]
    graph = pot.graph(_water_box(2))
    mod = pot.module

    def total(params, positions):
        return jnp.sum(jaxuft.energy(mod, params, graph._replace(positions=positions)))

    e, (g_params, g_pos) = jax.jit(jax.value_and_grad(total, argnums=(0, 1)))(pot.params, graph.positions)
    forces = jaxuft.energy_forces_stress(mod, pot.params, graph)["forces"]
    mask = np.asarray(graph.node_mask)
    np.testing.assert_allclose(np.asarray(g_pos)[mask], -np.asarray(forces)[mask], rtol=1e-9, atol=1e-10)

    # directional derivative in parameter space against a central difference
    leaves, treedef = jax.tree_util.tree_flatten(pot.params)
    rng = np.random.default_rng(0)
    direction = [rng.normal(size=np.shape(x)) * (np.issubdtype(np.asarray(x).dtype, np.floating)) for x in leaves]
    h = 1e-5

    def shifted(s):
        return jax.tree_util.tree_unflatten(treedef, [np.asarray(x) + s * d for x, d in zip(leaves, direction)])

    total_jit = jax.jit(total)
    fd = (float(total_jit(shifted(h), graph.positions)) - float(total_jit(shifted(-h), graph.positions))) / (2 * h)
    analytic = sum(float(np.sum(np.asarray(g) * d)) for g, d in zip(jax.tree_util.tree_leaves(g_params), direction))
    assert abs(analytic) > 1e-8
    np.testing.assert_allclose(analytic, fd, rtol=1e-6)
    np.testing.assert_allclose(float(e), float(pot.energy(pot.params, graph)[0]), rtol=1e-12)


def test_monitor_uses_public_seam():
    import inspect

    from jaxuft.uq import monitor

    src = inspect.getsource(monitor)
    assert "_node_outputs" not in src and "node_descriptors" in src


def test_docs_seam_example_runs():
    """The runnable example in docs/seam.md runs as written."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "seam.md").read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```python\n")[1:]]
    assert blocks, "docs/seam.md has no python example"
    for block in blocks:
        exec(compile(block, "docs/seam.md", "exec"), {})
