"""The fast MACE building blocks against their naive definitions (no reference venv needed).

``symmetric_contraction`` evaluates mace-torch's ``Contraction`` as a sparse polynomial
and ``conv_messages`` couples spherical harmonics first and sums per instruction; both
must equal the textbook dense contractions exactly (float64), for any U tensor (not only
symmetric ones) and for outputs with and without an ``m`` axis.  Also the host allocator
tuning and the MD model-capacity rounding.
"""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

jax.config.update("jax_enable_x64", True)

from jaxuft.models import irreps as I  # noqa: E402
from jaxuft.models.mace import conv_messages, symmetric_contraction  # noqa: E402


def _naive_contraction(x, species, weights, Us, lead):
    """mace-torch's recursion: highest order first, contracting the last coupling index with x."""
    out = None
    for nu in range(len(Us), 0, -1):
        U = np.asarray(Us[nu - 1])
        W = np.asarray(weights[nu - 1])[species]  # (N, K, C)
        uw = np.einsum("...k,nkc->nc...", U, W)  # (N, C, [M,] L * nu)
        out = uw if out is None else out + uw
        out = np.einsum("nc...i,nci->nc...", out, x)
    return out


@pytest.mark.parametrize("lead", [0, 1])
def test_symmetric_contraction_equals_dense_recursion(lead):
    rng = np.random.default_rng(lead)
    N, C, L, S, M = 5, 3, 4, 3, 3
    Us = []
    for nu, K in zip((1, 2, 3), (2, 3, 4)):
        shape = ((M,) if lead else ()) + (L,) * nu + (K,)
        U = rng.normal(size=shape) * (rng.random(shape) < 0.3)  # sparse, not symmetric
        Us.append(U)
    x = rng.normal(size=(N, C, L))
    species = rng.integers(0, S, N)
    weights = [rng.normal(size=(S, U.shape[-1], C)) for U in Us]
    got = symmetric_contraction(jnp.asarray(x), jnp.asarray(species), [jnp.asarray(w) for w in weights], Us, lead)
    want = _naive_contraction(x, species, weights, Us, lead)
    want = np.moveaxis(want, 2, -1) if lead else want  # (N, C, M)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-12, atol=1e-12)
    # and the gradient (forces flow through x)
    g = jax.grad(lambda xx: jnp.sum(jnp.sin(symmetric_contraction(xx, jnp.asarray(species), weights, Us, lead))))(
        jnp.asarray(x))
    eps = 1e-6
    k = (1, 2, 3)
    xp, xm = x.copy(), x.copy()
    xp[k] += eps
    xm[k] -= eps
    fd = (np.sum(np.sin(symmetric_contraction(jnp.asarray(xp), jnp.asarray(species), weights, Us, lead)))
          - np.sum(np.sin(symmetric_contraction(jnp.asarray(xm), jnp.asarray(species), weights, Us, lead)))) / (2 * eps)
    assert abs(float(g[k]) - float(fd)) < 1e-6 * max(1.0, abs(float(fd)))


def test_conv_messages_equals_dense_tensor_product():
    rng = np.random.default_rng(0)
    irreps1 = I.parse_irreps("3x0e+3x1o")
    sh_ir = I.spherical_harmonics_irreps(2)
    irreps_mid, instructions = I.tp_out_irreps_with_instructions(irreps1, sh_ir, I.parse_irreps("0e+1o+2e+1e"))
    E, N = 11, 4
    x1 = rng.normal(size=(E, I.irreps_dim(irreps1)))
    sh = rng.normal(size=(E, I.irreps_dim(sh_ir)))
    numel = sum(irreps1[i1].mul for i1, _, _ in instructions)
    w = rng.normal(size=(E, numel))
    receivers = rng.integers(0, N, E)
    got = conv_messages(jnp.asarray(x1), jnp.asarray(sh), jnp.asarray(w), jnp.asarray(receivers), N,
                        irreps1, sh_ir, irreps_mid, instructions)
    o1, o2 = I.offsets(irreps1), I.offsets(sh_ir)
    outs, w_off = [], 0
    for i1, i2, k in instructions:
        m1, m2, mo = irreps1[i1], sh_ir[i2], irreps_mid[k]
        a = x1[:, o1[i1]: o1[i1] + m1.mul * m1.dim].reshape(E, m1.mul, m1.dim)
        b = sh[:, o2[i2]: o2[i2] + m2.dim]
        cg = I.wigner_3j(m1.l, m2.l, mo.l) * np.sqrt(mo.dim)
        msg = np.einsum("eui,ej,ijk,eu->euk", a, b, cg, w[:, w_off: w_off + m1.mul]).reshape(E, -1)
        w_off += m1.mul
        agg = np.zeros((N, msg.shape[1]))
        np.add.at(agg, receivers, msg)
        outs.append(agg)
    np.testing.assert_allclose(np.asarray(got), np.concatenate(outs, axis=1), rtol=1e-12, atol=1e-12)


def test_host_allocator_is_left_alone_on_import():
    code = "import jaxuft; from jaxuft import host_memory; print(host_memory.applied())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_host_allocator_tuning_is_applied_and_can_be_disabled():
    if not sys.platform.startswith("linux"):
        pytest.skip("mallopt tuning is Linux/glibc only")
    code = "from jaxuft import host_memory; host_memory.tune(); print(host_memory.applied())"
    env = dict(os.environ)
    env.pop("JAXUFT_TUNE_MALLOC", None)
    on = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    env["JAXUFT_TUNE_MALLOC"] = "0"
    off = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert off.stdout.strip() == "False"
    import ctypes.util

    if ctypes.util.find_library("c") and "musl" not in (os.confstr("CS_GNU_LIBC_VERSION") or "musl"):
        assert on.stdout.strip() == "True"


def test_model_capacity_is_tight_and_rounded():
    from jaxuft.md.neighbors import model_capacity_for

    cap = model_capacity_for(12652, 1.05)
    assert cap % 128 == 0 and 12652 * 1.05 <= cap < 12652 * 1.05 + 128 + 8
    assert model_capacity_for(0, 1.05) == 128


@pytest.mark.parametrize("size", [1, 3, 8])
def test_receiver_chunks_sum_equals_edge_scatter(size):
    """Messages summed per receiver chunk equal the per-edge scatter for any receiver pattern
    (isolated nodes, one node receiving most edges, padding edges on the last node)."""
    from jaxuft.models.mace import receiver_chunks, take_slots

    rng = np.random.default_rng(size)
    irreps1 = I.parse_irreps("3x0e+2x1o")
    sh_ir = I.spherical_harmonics_irreps(2)
    irreps_mid, instructions = I.tp_out_irreps_with_instructions(irreps1, sh_ir, I.parse_irreps("0e+1o+2e+1e"))
    E, N = 29, 6
    receivers = np.concatenate([np.full(15, 2), rng.integers(0, N - 1, E - 19), np.full(4, N - 1)])
    rng.shuffle(receivers)
    x1 = rng.normal(size=(E, I.irreps_dim(irreps1)))
    sh = rng.normal(size=(E, I.irreps_dim(sh_ir)))
    w = rng.normal(size=(E, sum(irreps1[i1].mul for i1, _, _ in instructions)))
    args = (irreps1, sh_ir, irreps_mid, instructions)
    want = conv_messages(jnp.asarray(x1), jnp.asarray(sh), jnp.asarray(w), jnp.asarray(receivers), N, *args)
    ch = receiver_chunks(jnp.asarray(receivers), N, size)
    assert ch.slot_edge.shape[0] == size * (-(-E // size) + N)
    assert sorted(np.asarray(ch.slot_edge)[np.asarray(ch.used)].tolist()) == list(range(E))  # each edge once
    slot_recv = np.repeat(np.asarray(ch.receiver), size)
    used = np.asarray(ch.used)
    np.testing.assert_array_equal(slot_recv[used], receivers[np.asarray(ch.slot_edge)[used]])
    got = conv_messages(*(take_slots(jnp.asarray(a), ch, 0.0) for a in (x1, sh, w)), None, N, *args, chunks=ch)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("size", [1, 4])
def test_scalar_chunk_messages_hand_written_backward(size):
    """The chunked message sum of a scalar-input layer with its hand-written backward
    (``MACE.message_vjp``) equals plain autodiff: values, first derivatives and a second
    derivative (fine-tuning on forces differentiates the backward again); ``jax.jvp`` through
    it raises, which is why :func:`jaxuft.models.forward_mode` exists."""
    from jaxuft.models.mace import receiver_chunks, take_slots

    rng = np.random.default_rng(7 + size)
    irreps1 = I.parse_irreps("3x0e")
    sh_ir = I.spherical_harmonics_irreps(3)
    irreps_mid, instructions = I.tp_out_irreps_with_instructions(irreps1, sh_ir, I.parse_irreps("0e+1o+2e+3o"))
    E, N = 23, 5
    receivers = np.concatenate([np.full(9, 1), rng.integers(0, N, E - 9)])
    ch = receiver_chunks(jnp.asarray(receivers), N, size)
    x1, sh = rng.normal(size=(E, 3)), rng.normal(size=(E, I.irreps_dim(sh_ir)))
    w = rng.normal(size=(E, 3 * len(instructions)))
    probe = jnp.asarray(rng.normal(size=(N, I.irreps_dim(irreps_mid))))
    args = (irreps1, sh_ir, irreps_mid, instructions)

    def loss(x1, sh, w, custom):
        slots = [take_slots(a, ch, 0.0) for a in (x1, sh, w)]
        return jnp.sum(jnp.sin(conv_messages(*slots, None, N, *args, chunks=ch, custom_vjp=custom)) * probe)

    inputs = tuple(jnp.asarray(a) for a in (x1, sh, w))
    want, got = (jax.value_and_grad(loss, argnums=(0, 1, 2))(*inputs, c) for c in (False, True))
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=1e-12)

    def force_like(w, custom):  # d/dw of a projection of d(loss)/d(sh): reverse over reverse
        return jnp.sum(jax.grad(loss, argnums=1)(inputs[0], inputs[1], w, custom) * inputs[1])

    np.testing.assert_allclose(np.asarray(jax.grad(force_like)(inputs[2], True)),
                               np.asarray(jax.grad(force_like)(inputs[2], False)), rtol=1e-11, atol=1e-11)
    with pytest.raises(TypeError):
        jax.jvp(lambda s: loss(inputs[0], s, inputs[2], True), (inputs[1],), (inputs[1],))
    jax.jvp(lambda s: loss(inputs[0], s, inputs[2], False), (inputs[1],), (inputs[1],))
