"""The live Q-residual monitor: pure hook functions, equal to offline Q, no recompilation, MD wiring."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase import Atoms

from jaxuft.models.pair import morse_config, morse_params
from jaxuft.potential import Potential
from jaxuft.uq import PCA, build_monitor, element_limits


def water_cluster(rng, n_mol=4, jitter=0.05):
    base = np.array([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]])
    pos, sym = [], []
    for k in range(n_mol):
        off = np.array([3.0 * (k % 2), 3.0 * (k // 2), 0.3 * k])
        pos.append(base + off)
        sym += ["O", "H", "H"]
    pos = np.concatenate(pos) + rng.normal(scale=jitter, size=(3 * n_mol, 3))
    return Atoms(sym, positions=pos)


@pytest.fixture(scope="module")
def setup():
    pot = Potential(morse_config([1, 8], r_max=4.0), morse_params(2), dtype="float64")
    rng = np.random.default_rng(0)
    train = [water_cluster(rng) for _ in range(12)]
    X = pot.descriptors(train)
    numbers = np.concatenate([a.get_atomic_numbers() for a in train])
    pca = PCA(3).fit(X)
    limits = element_limits(pca.q_residual(X), numbers)
    return pot, pca, limits, train, X, rng


def test_monitor_matches_offline_and_does_not_recompile(setup):
    pot, pca, limits, train, X, rng = setup
    mon = build_monitor(pot, pca, limits)
    traces = []

    def observed(params, graph, extra):
        traces.append(1)
        return mon.fn(params, graph, extra)

    fn = jax.jit(observed)
    frames = [water_cluster(rng, jitter=0.3) for _ in range(3)]
    for a in frames:
        g = pot.graph(a)
        obs = fn(pot.params, g, mon.extra_args)
        q_off = pca.q_residual(pot.descriptors(a))
        n = len(a)
        np.testing.assert_allclose(np.asarray(obs["q"][:n]), q_off, rtol=1e-10, atol=1e-12)
        assert np.all(np.asarray(obs["q"][n:]) == 0)
        # per-element maxima and the flag from the same numbers on the host
        for k, z in enumerate(pot.atomic_numbers):
            sel = a.get_atomic_numbers() == z
            assert float(obs["q_max_element"][0, k]) == pytest.approx(q_off[sel].max(), rel=1e-10)
        lim = limits.array(a.get_atomic_numbers())
        assert float(obs["q_ratio"][0]) == pytest.approx(np.max(q_off / lim), rel=1e-10)
        assert bool(obs["q_flag"][0]) == bool(np.any(q_off > lim))
        assert not bool(obs["q_flag"][-1])  # the padding graph never flags
    n_traces = len(traces)
    # a refitted PCA (same shapes) and new limits: new arrays only, same compiled function
    pca2 = PCA(3).fit(X[::-1] * 1.1)
    mon2 = mon.with_pca(pca2, {"H": 0.0, "O": 0.0})
    assert mon2.fn is mon.fn and build_monitor(pot, pca2).fn is mon.fn
    g = pot.graph(frames[0])
    obs2 = fn(pot.params, g, mon2.extra_args)
    assert len(traces) == n_traces
    np.testing.assert_allclose(np.asarray(obs2["q"][: len(frames[0])]), pca2.q_residual(pot.descriptors(frames[0])), rtol=1e-10)
    assert bool(obs2["q_flag"][0]) and bool(mon2.stop(obs2, mon2.extra_args))
    # no limits: record only
    obs3 = fn(pot.params, g, build_monitor(pot, pca).extra_args)
    assert not bool(obs3["q_flag"][0])


def test_monitor_in_a_scan_and_float32(setup):
    """Inside lax.scan (as in the MD engine) and with a float32 potential."""
    pot, pca, limits, train, X, rng = setup
    pot32 = Potential(pot.config, morse_params(2), dtype="float32")
    mon = build_monitor(pot32, pca, limits)
    a = water_cluster(rng, jitter=0.2)
    g = pot32.graph(a)
    disp = jnp.asarray(np.random.default_rng(5).normal(scale=0.05, size=(4,) + g.positions.shape), jnp.float32)
    disp = disp.at[:, len(a):].set(0.0)

    def body(carry, d):
        gg = g._replace(positions=g.positions + d)
        return carry, mon.fn(pot32.params, gg, mon.extra_args)["q"]

    _, qs = jax.jit(lambda: jax.lax.scan(body, 0, disp))()
    for k in range(4):
        b = a.copy()
        b.positions += np.asarray(disp[k, : len(a)], dtype=np.float64)
        q_off = pca.q_residual(pot.descriptors(b))
        np.testing.assert_allclose(np.asarray(qs[k, : len(a)]), q_off, rtol=2e-3, atol=1e-5 * q_off.max())


def _md():
    md = pytest.importorskip("jaxuft.md", reason="jaxuft.md not available")
    if not hasattr(md, "Simulation"):
        pytest.skip("jaxuft.md has no Simulation yet")
    return md


def test_monitor_in_md_simulation(setup):
    md = _md()
    from jaxuft.md.compilation import CompilationCounter

    pot, pca, limits, train, X, rng = setup
    mon = build_monitor(pot, pca, limits)
    sim = md.Simulation(pot, md.Langevin(timestep=0.5, temperature=300.0, friction=0.02), **mon.simulation_kwargs(stop=False))
    atoms = train[0]
    state0 = sim.init(atoms, replicas=2, seed=1)
    state, traj = sim.run(state0, pot.params, n_steps=20, record_every=5, extra=mon.extra_args, progress=False)
    q_live = traj.observables["q"]  # (R, F, n) (the engine trims the padding atom)
    n = len(atoms)
    assert q_live.shape[:2] == (2, 4) and q_live.shape[2] in (n, n + 1)
    for r in range(2):
        for f in range(4):
            b = Atoms(atoms.get_chemical_symbols(), positions=traj.data["positions"][r, f])
            q_off = pca.q_residual(pot.descriptors(b))
            np.testing.assert_allclose(q_live[r, f, :n], q_off, rtol=1e-8, atol=1e-10)
    # a new PCA and tighter limits: the compiled MD program is reused
    mon2 = mon.with_pca(PCA(3).fit(X * 0.9), {"H": 1e-12, "O": 1e-12})
    with CompilationCounter() as cc:
        _, traj2 = sim.run(state, pot.params, n_steps=20, record_every=5, extra=mon2.extra_args, progress=False)
    assert cc.count == 0, cc.names
    assert traj2.observables["q_flag"][:, :, 0].all()


def test_monitor_stops_md_replica(setup):
    md = _md()
    pot, pca, limits, train, X, rng = setup
    mon = build_monitor(pot, pca, {"H": 1e-12, "O": 1e-12})
    sim = md.Simulation(pot, md.Langevin(timestep=0.5, temperature=300.0, friction=0.02), **mon.simulation_kwargs(stop=True))
    state = sim.init(train[1], replicas=2, seed=2)
    state, traj = sim.run(state, pot.params, n_steps=10, record_every=5, extra=mon.extra_args, progress=False)
    from jaxuft.md.state import STOP_OBSERVABLE

    assert np.all(np.asarray(state.status) == STOP_OBSERVABLE)
    assert [s["status"] for s in traj.report["stops"]] == ["observable", "observable"]


def test_soap_monitor_from_graph_edges():
    """SOAP computed from a graph's edges (for the live monitor) equals SOAP.compute; Q equals offline Q."""
    from ase.build import bulk

    from jaxuft.uq import SOAP
    from jaxuft.uq.soap import graph_descriptor_fn

    pot = Potential(morse_config([8, 11, 17], r_max=6.0), morse_params(3), dtype="float64")
    soap = SOAP(["O", "Na", "Cl"], 4.0, 3, 3, 0.4, periodic=True)
    rng = np.random.default_rng(4)
    frames = []
    for _ in range(4):
        a = bulk("NaCl", "rocksalt", a=5.6).repeat((1, 1, 2))
        a[0].symbol = "O"
        a.rattle(0.1, seed=int(rng.integers(1 << 30)))
        frames.append(a)
    pca = PCA(2).fit(soap.compute(frames[:3]))
    mon = build_monitor(pot, pca, None, descriptor_fn=graph_descriptor_fn(soap, pot.atomic_numbers, pot.cutoff))
    fn = jax.jit(mon.fn)
    for a in frames:
        obs = fn(pot.params, pot.graph(a), mon.extra_args)
        np.testing.assert_allclose(np.asarray(obs["q"][: len(a)]), pca.q_residual(soap.compute(a)), rtol=1e-8, atol=1e-10)
    with pytest.raises(ValueError, match="graph's edges only reach"):
        graph_descriptor_fn(SOAP(["O"], 5.0, 2, 2, 0.5), pot.atomic_numbers, 5.0)


def _small_model(kind):
    """float64 models of the shapes the monitor is used with: a tiny MACE, a two-layer SevenNet-shaped model."""
    if kind == "mace":
        from jaxuft.bench.models import tiny_mace

        return tiny_mace("float64", atomic_numbers=(1, 8))
    from test_sevennet import SMALL, _random_params

    config = dict(SMALL, atomic_numbers=[1, 8], node_irreps=["4x0e", "4x0e+2x1o", "4x0e"], lmax_sh=1,
                  radial_hidden=[8], denominators=[7.0, 8.0])
    return Potential(config, _random_params(config, seed=3), dtype="float64")


@pytest.mark.parametrize("kind", ["mace", "sevennet"])
def test_monitor_reuses_the_force_pass_descriptors(kind, tmp_path):
    """A model-descriptor monitor takes the descriptors of the MD step's own force evaluation (no second
    forward pass): same Q as the monitor's own pass to float64 round-off, while recording, stopping,
    on stopped replicas, after a restore and with a new PCA, and no recompilation."""
    md = _md()
    from jaxuft.md.compilation import CompilationCounter
    from jaxuft.md.state import STOP_OBSERVABLE

    pot = _small_model(kind)
    rng = np.random.default_rng(7)
    train = [water_cluster(rng) for _ in range(6)]
    X = pot.descriptors(train)
    pca = PCA(3).fit(X)
    mon = build_monitor(pot, pca, None)  # record only: never flags
    assert mon.fn.model_descriptors == pot.module
    ens = md.Langevin(timestep=0.5, temperature=300.0, friction=0.02)
    start = train[1]
    runs = {}
    for reuse in (True, False):
        kw = {} if reuse else {"observables_descriptors": False}  # default: reuse (the hook names this model)
        sim = md.Simulation(pot, ens, **kw, **mon.simulation_kwargs(stop=True))
        state = sim.init(start, replicas=2, seed=3)
        assert sim.program(1, 1).observables_descriptors is reuse
        state, t1 = sim.run(state, pot.params, n_steps=6, record_every=2, extra=mon.extra_args, progress=False)
        sim.save(state, tmp_path / f"{reuse}.npz")
        tight = mon.with_pca(PCA(3).fit(X * 0.9), {"H": 1e-12, "O": 1e-12})
        with CompilationCounter() as cc:  # a new PCA and limits: the same compiled program
            stopped, t2 = sim.run(state, pot.params, n_steps=6, record_every=2, extra=tight.extra_args, progress=False)
            _, t3 = sim.run(stopped, pot.params, n_steps=6, record_every=2, extra=mon.extra_args, progress=False)
        assert cc.count == 0, cc.names
        assert np.all(np.asarray(stopped.status) == STOP_OBSERVABLE)
        sim2, restored = md.Simulation.restore(tmp_path / f"{reuse}.npz", pot, **mon.simulation_kwargs(stop=True),
                                               **kw)
        with CompilationCounter() as cc:
            _, t4 = sim2.run(restored, pot.params, n_steps=6, record_every=2, extra=mon.extra_args, progress=False)
        assert cc.count == 0, cc.names
        runs[reuse] = (t1, t2, t3, t4)
    for new, old in zip(runs[True], runs[False]):
        np.testing.assert_array_equal(new.data["positions"], old.data["positions"])
        q_new, q_old = np.asarray(new.observables["q"]), np.asarray(old.observables["q"])
        assert q_old.max() > 0
        np.testing.assert_allclose(q_new, q_old, rtol=1e-10, atol=1e-13 * q_old.max())
        np.testing.assert_array_equal(new.observables["q_flag"], old.observables["q_flag"])
    # the live Q (on every recorded frame, stopped replicas included) is the offline Q of that frame
    t3 = runs[True][2]
    b = Atoms(start.get_chemical_symbols(), positions=t3.data["positions"][1, -1])
    np.testing.assert_allclose(t3.observables["q"][1, -1], pca.q_residual(pot.descriptors(b)), rtol=1e-8,
                               atol=1e-12)


def test_monitor_reuses_descriptors_in_a_mixed_batch():
    """Mixed batch (two systems of different sizes): the reused descriptors give the monitor's own Q."""
    md = _md()
    pot = _small_model("mace")
    rng = np.random.default_rng(8)
    systems = [water_cluster(rng, n_mol=3), water_cluster(rng, n_mol=4)]
    pca = PCA(3).fit(pot.descriptors([water_cluster(rng) for _ in range(4)]))
    mon = build_monitor(pot, pca, None)
    q = {}
    for reuse in (True, False):
        sim = md.Simulation(pot, md.Langevin(timestep=0.5, temperature=300.0, friction=0.02),
                            observables_descriptors=reuse, **mon.simulation_kwargs())
        state = sim.init(systems, seed=[1, 2])
        _, traj = sim.run(state, pot.params, n_steps=4, record_every=2, extra=mon.extra_args, progress=False)
        q[reuse] = np.asarray(traj.observables["q"])
    assert q[False].max() > 0 and np.all(q[False][0, :, 9:] == 0)  # the padding atoms of the smaller system
    np.testing.assert_allclose(q[True], q[False], rtol=1e-10, atol=1e-13 * q[False].max())
