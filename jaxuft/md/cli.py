"""``jaxuft md``: run an MD ensemble from the command line.

    jaxuft md --model sevennet-0 --structure start.xyz --ensemble npt --temperature 300 \\
        --pressure 1 --timestep 0.5 --steps 20000 --replicas 8 --record-every 100 -o runs/md1

writes ``replica_000.extxyz`` ... (one trajectory per replica, ASE-readable with
energy/forces/stress), ``trajectory.npz`` (all frames, compact), ``state.npz``
(final state: continue with ``--restart``) and ``summary.json`` (atom-steps/s,
compile time, number of compilations, capacity regrowths, stop reasons).
``--model morse`` is a built-in toy Morse potential for quick tries.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

from .ensembles import KINDS


def register(subparsers) -> None:
    """Add the ``md`` subcommand to an argparse ``subparsers`` object."""
    p = subparsers.add_parser(
        "md",
        help="molecular dynamics of one structure: NVE/NVT/NPT, replica ensembles, extxyz + npz output",
        description=__doc__,
        formatter_class=__import__("argparse").RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True,
                   help="converted model directory, torch checkpoint, model-zoo name, or 'morse' (built-in toy)")
    p.add_argument("--structure", required=True, help="starting structure file (any format ASE reads)")
    p.add_argument("--index", default="0",
                   help="frame(s) of the structure file (ASE syntax; default the first; several frames = one per replica)")
    p.add_argument("--ensemble", choices=KINDS, default="nvt-langevin")
    p.add_argument("--temperature", type=float, default=300.0, help="K (thermostat target and initial velocities)")
    p.add_argument("--pressure", type=float, default=1.0, help="bar (npt)")
    p.add_argument("--timestep", type=float, default=1.0, help="fs")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument("--record-every", type=int, default=10, help="steps between recorded frames")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--friction", type=float, default=0.01, help="1/fs (nvt-langevin)")
    p.add_argument("--tau-t", type=float, default=None, help="thermostat period, fs (nvt-nh, npt; default 100 steps)")
    p.add_argument("--tau-p", type=float, default=None, help="barostat period, fs (npt; default 1000 steps)")
    p.add_argument("--init-temperature", type=float, default=None,
                   help="K for the initial velocities (default: --temperature; 0 with nve unless the file has momenta)")
    p.add_argument("--max-temperature", type=float, default=None, help="K; a hotter replica stops (default 10x target)")
    p.add_argument("--min-distance", type=float, default=0.5, help="Å; closer atoms stop a replica")
    p.add_argument("--skin", type=float, default=0.5, help="neighbour-list skin, Å")
    p.add_argument("--chunk-steps", type=int, default=1000, help="steps per compiled chunk (progress granularity)")
    p.add_argument("--restart", default=None, help="state.npz of an earlier run to continue from")
    p.add_argument("-o", "--output", required=True, help="output directory")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_cli)


def builtin_morse(numbers, dtype: str):
    """A toy Morse potential for the elements in ``numbers``: r0 from covalent radii, D 0.3 eV, a 1.5/Å, 5 Å cutoff."""
    import numpy as np
    from ase.data import covalent_radii

    from ..models.pair import morse_config, morse_params
    from ..potential import Potential

    z = sorted({int(n) for n in numbers})
    params = morse_params(len(z), D=0.3, a=1.5, r0=0.0)
    r = np.array([covalent_radii[k] for k in z])
    params["r0"] = r[:, None] + r[None, :]
    return Potential(morse_config(z, 5.0), params, dtype=dtype)


def _read_structures(path: str, index: str):
    from ase.io import read

    from .errors import MDInputError

    if not Path(path).exists():
        raise FileNotFoundError(f"structure file {path} does not exist")
    try:
        frames = read(path, index=index)
    except Exception as exc:  # ASE raises many types for unreadable files
        raise MDInputError(f"cannot read {path} (index {index}): {exc}") from None
    frames = frames if isinstance(frames, list) else [frames]
    if not frames:
        raise MDInputError(f"{path} (index {index}) holds no structures")
    return frames


def run_cli(args) -> int:
    import jax
    import numpy as np

    from . import Safety, Simulation, load_state, make, save_state
    from .errors import MDInputError

    frames = _read_structures(args.structure, args.index)
    replicas = args.replicas
    if len(frames) > 1 and replicas not in (1, len(frames)):
        raise MDInputError(f"{len(frames)} frames selected for {replicas} replicas; give one frame or one per replica")
    replicas = max(replicas, len(frames))
    ensemble = make(args.ensemble, args.timestep, temperature=args.temperature, pressure=args.pressure,
                    friction=args.friction, tau_t=args.tau_t, tau_p=args.tau_p)
    if args.model == "morse":
        potential = builtin_morse(frames[0].get_atomic_numbers(), args.dtype)
    else:
        from ..api import load

        potential = load(args.model, dtype=args.dtype)
    sim = Simulation(
        potential, ensemble, skin=args.skin, chunk_steps=args.chunk_steps,
        safety=Safety(max_temperature=args.max_temperature, min_distance=args.min_distance),
    )
    init_t = args.init_temperature
    if init_t is None and ensemble.kind != "nve":
        init_t = args.temperature
    state = sim.init(frames if len(frames) > 1 else frames[0], replicas=replicas, seed=args.seed, temperature=init_t)
    if args.restart:
        state, _ = load_state(args.restart)
        if state.positions.shape[0] != replicas or state.positions.shape[1] != len(frames[0]):
            raise MDInputError(
                f"{args.restart} holds {state.positions.shape[0]} replicas of {state.positions.shape[1]} atoms, "
                f"but this run has {replicas} replicas of {len(frames[0])} atoms"
            )
    if args.steps % args.record_every:
        raise MDInputError(f"--steps ({args.steps}) must be a multiple of --record-every ({args.record_every})")

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    state, traj = sim.run(state, n_steps=args.steps, record_every=args.record_every, progress=not args.quiet)
    wall = time.perf_counter() - t0
    paths = traj.write_extxyz(out)
    traj.save_npz(out / "trajectory.npz")
    save_state(state, out / "state.npz", seed=args.seed)
    rep = traj.report
    summary = {
        "model": args.model,
        "structure": str(args.structure),
        "dtype": args.dtype,
        "seed": args.seed,
        **ensemble.describe(),
        "replicas": replicas,
        "atoms": len(frames[0]),
        "steps": args.steps,
        "record_every": args.record_every,
        "frames_per_replica": [int(v) for v in traj.valid.sum(axis=1)],
        "wall_s": wall,
        "compile_s": rep["compile_s"],
        "compilations": rep["compilations"],
        "atom_steps_per_s": rep["atom_steps_per_s"],
        "atom_steps_per_s_incl_compile": rep["atom_steps_per_s_incl_compile"],
        "capacity_regrows": rep["capacity_regrows"],
        "neighbour_capacity": rep["capacity"],
        "model_capacity": rep["model_capacity"],
        "stops": rep["stops"],
        "mean_temperature_K": float(np.mean(traj.temperature[traj.valid])) if traj.valid.any() else None,
        "trajectories": [p.name for p in paths],
        "versions": {"jax": jax.__version__, "python": platform.python_version(),
                     "backend": jax.default_backend(), "devices": len(jax.devices())},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    if not args.quiet:
        stopped = [s for s in rep["stops"] if s["status"] != "running"]
        print(
            f"md {ensemble.kind}: {replicas} x {len(frames[0])} atoms x {args.steps} steps in {wall:.1f} s "
            f"({rep['atom_steps_per_s']:.3g} atom-steps/s without compile, {rep['compilations']} compilations, "
            f"{rep['compile_s']:.1f} s compiling); {len(stopped)} replica(s) stopped; wrote {out}",
            file=sys.stdout,
        )
        for s in stopped:
            print(f"  replica {s['replica']}: {s.get('message', s['status'])} after step {s['step']}")
    return 0
