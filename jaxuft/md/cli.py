"""``jaxuft md``: run an MD ensemble from the command line, writing frames and a restartable state at every chunk.

    jaxuft md --model sevennet-0 --structure start.xyz --ensemble npt --temperature 300 \\
        --pressure 1 --timestep 0.5 --steps 20000 --replicas 8 --record-every 100 -o runs/md1
    jaxuft md --resume -o runs/md1                      # after Ctrl-C, kill or a crash: continue exactly
    jaxuft md --restart runs/md1/state.npz --steps 20000 -o runs/md2   # more steps into a new directory

writes ``replica_000.extxyz`` ... (one trajectory per replica, ASE-readable with
energy/forces/stress), ``trajectory.npz`` (all frames, compact), ``state.npz`` (the
self-describing state after the last finished chunk) and, at the end, ``summary.json``
(atom-steps/s, compile time, compilations, capacity regrowths, stop reasons, whether
the run was a restart and from what, ensemble statistics: mean ± autocorrelation-aware error
of energy, temperature, pressure, volume and density (``--statistics full``: also g(r), and
figures ``statistics_*.png``), and the replica-exchange acceptance per temperature pair).
Several frames of different compositions (``--index :``) run as one mixed batch, one replica
per frame; ``--temperatures 300 350 400 --replica-exchange 100`` runs a temperature ladder
with replica exchange.  An output directory holding another run is refused
unless ``--overwrite`` (clears it) or ``--resume``.  Settings may come from ``--config FILE``
(YAML/TOML/JSON of the flags below, underscores for dashes); flags override it.
``--model morse`` is a built-in toy Morse potential for quick tries.
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import signal
import sys
import time
from pathlib import Path

from ..errors import JaxuftError
from .config import MDConfig, add_config_arguments, given_arguments
from .output import STATE_NAME, SUMMARY_NAME, TRAJECTORY_NAME, RunWriter, replica_name

#: settings that cannot change when a run continues (they are fixed in the saved state)
_FIXED_ON_RESTART = ("dtype", "skin", "replicas")


class MDInterrupted(JaxuftError):
    """SIGINT/SIGTERM stopped ``jaxuft md``; the state of the last finished chunk is on disk."""


def register(subparsers) -> None:
    """Add the ``md`` subcommand to an argparse ``subparsers`` object."""
    p = subparsers.add_parser(
        "md",
        help="molecular dynamics of one structure: NVE/NVT/NPT, replica ensembles, extxyz + npz output, resumable",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", default=None,
                   help="converted model directory, torch checkpoint, model-zoo name, or 'morse' (built-in toy); "
                        "with --resume/--restart the run's own model by default")
    p.add_argument("--structure", default=None,
                   help="starting structure file (any format ASE reads); with --resume/--restart optional and "
                        "checked against the saved run")
    p.add_argument("--index", default="0",
                   help="frame(s) of the structure file (ASE syntax; default the first; several frames = one per replica)")
    p.add_argument("--config", default=None, help="YAML/TOML/JSON file of the settings below; flags override it")
    add_config_arguments(p)
    p.add_argument("--restart", default=None,
                   help="state.npz of an earlier run: continue from it for --steps more steps into a new -o")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in -o from its last finished chunk (after Ctrl-C, kill or a crash)")
    p.add_argument("--overwrite", action="store_true", help="clear -o first if it holds another run")
    p.add_argument("-o", "--output", required=True, help="output directory")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument("--statistics", choices=("numbers", "full", "off"), default="numbers",
                   help="ensemble statistics in summary.json: 'numbers' (mean ± error of energy, temperature, "
                        "pressure, volume, density; default), 'full' (also g(r) with error bands and "
                        "statistics_*.png figures), 'off'")
    p.set_defaults(func=run_cli)


def builtin_morse(numbers, dtype: str):
    """A toy Morse potential for the elements in ``numbers`` (see :func:`jaxuft.models.pair.builtin_morse`)."""
    from ..models.pair import builtin_morse as morse
    from ..potential import Potential

    config, params = morse(numbers)
    return Potential(config, params, dtype=dtype)


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


def _config_from_description(desc: dict) -> dict:
    """MDConfig fields of a state saved by the library (no CLI bookkeeping in it)."""
    e, s = desc["ensemble"], desc["safety"]
    ladder = e["temperature"] if isinstance(e["temperature"], list) else None
    cfg = dict(ensemble=e["kind"], timestep=e["timestep"], temperature=ladder[0] if ladder else e["temperature"],
               temperatures=ladder, replica_exchange=desc["settings"].get("replica_exchange"), pressure=e["pressure"],
               friction=e["friction"], tau_t=e["tau_t"], tau_p=e["tau_p"], dtype=desc["dtype"],
               skin=desc["settings"]["skin"], replicas=desc["replicas"], max_temperature=s["max_temperature"],
               min_distance=s["min_distance"], seed=desc.get("seed") or 0)
    return {k: v for k, v in cfg.items() if v is not None}


def _settings(args, mode: str, desc: dict | None) -> tuple[MDConfig, dict]:
    """The run's MDConfig and the saved bookkeeping (empty for a fresh run)."""
    from ..config import read_config_file, validate_config
    from .errors import MDInputError

    chosen = {**(read_config_file(args.config) if args.config else {}), **given_arguments(args)}
    extra = (desc or {}).get("extra") or {}
    if mode == "resume":
        saved = extra.get("config")
        if saved is None:
            raise MDInputError(f"{Path(args.output) / STATE_NAME} was not written by `jaxuft md`; continue it with "
                               "--restart into another directory")
        differ = [k for k, v in chosen.items() if saved.get(k) != v]
        if differ:
            k = differ[0]
            raise MDInputError(
                f"--resume continues the run as it was started, but --{k.replace('_', '-')} {chosen[k]} differs from "
                f"its {saved.get(k)}; leave the flag out, or continue with --restart {Path(args.output) / STATE_NAME} "
                "-o NEW_DIR to change settings")
        return validate_config(MDConfig, saved, source="the saved run's settings"), extra
    if mode == "restart" and desc is not None:
        base = dict(extra.get("config") or _config_from_description(desc))
        for k in _FIXED_ON_RESTART:
            if k in chosen and chosen[k] != base.get(k):
                raise MDInputError(f"--{k} cannot change when continuing a run (the saved state has {base.get(k)}); "
                                   "start a new run from a structure instead")
        return validate_config(MDConfig, {**base, **chosen}, source="md settings"), extra
    return validate_config(MDConfig, chosen, source="md settings"), extra


@contextlib.contextmanager
def _stop_on_signals():
    """First SIGINT/SIGTERM: finish the current chunk, save, stop; a second one: stop at once."""
    stop = {"signal": None}

    def handler(signum, frame):
        name = signal.Signals(signum).name
        if stop["signal"] is not None:
            raise MDInterrupted(f"{name} again: stopped at once")
        stop["signal"] = name
        print(f"jaxuft md: {name}: stopping after the current chunk (send it again to stop at once)",
              file=sys.stderr, flush=True)

    old = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
            old[sig] = signal.signal(sig, handler)
    try:
        yield stop
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def run_cli(args) -> int:
    import jax
    import numpy as np

    from ..fileio import atomic_write_json
    from ..outdir import claim_output_dir
    from .errors import MDInputError
    from .restart import check_structures
    from .simulation import Simulation
    from .state import load_state, read_state

    out = Path(args.output)
    if args.resume and args.restart:
        raise MDInputError("choose --restart (continue into a new directory) or --resume (continue the run in -o), "
                           "not both")
    mode, saved_path, desc = "fresh", None, None
    if args.resume and (out / STATE_NAME).exists():
        mode, saved_path = "resume", out / STATE_NAME
    elif args.restart:
        mode, saved_path = "restart", Path(args.restart)
        if args.overwrite and out.resolve() in saved_path.resolve().parents:
            raise MDInputError(f"--restart {saved_path} lies inside -o {out}, which --overwrite would clear; "
                               "use --resume to continue that run, or copy the state elsewhere")
    if saved_path is not None:
        _, _, desc = read_state(saved_path)  # a damaged file fails here, before anything is written
    cfg, saved_extra = _settings(args, mode, desc)

    frames = None
    if args.structure:
        frames = _read_structures(args.structure, args.index)
    elif mode == "fresh" or desc is None:
        raise MDInputError("--structure is required (the starting structure file)"
                           + (f"; {saved_path} is an old state that does not describe its run" if desc is None
                              and saved_path else ""))
    if frames is not None and desc is not None:
        check_structures(desc, frames, source=str(saved_path))
    model = args.model or saved_extra.get("model")
    if not model:
        raise MDInputError("--model is required (a model directory, zoo name, or 'morse')")
    replicas = cfg.n_replicas
    if mode == "fresh":
        if len(frames) > 1 and replicas not in (1, len(frames)):
            raise MDInputError(f"{len(frames)} frames selected for {replicas} replicas; give one frame or one per replica")
        replicas = max(replicas, len(frames))
    elif desc is not None:
        replicas = int(desc["replicas"])

    # claim the directory (refuse another run's files, lock, free space) before any work
    with claim_output_dir(out, kind="md run", overwrite=args.overwrite, resume=args.resume) as claimed:
        if mode != "resume" and claimed.resumed:  # --resume, but no chunk finished: start from scratch
            for p in [out / TRAJECTORY_NAME, out / SUMMARY_NAME, *out.glob("replica_*.extxyz")]:
                p.unlink(missing_ok=True)
        import numpy as np

        if frames is not None:
            numbers = np.concatenate([f.get_atomic_numbers() for f in frames])
        else:
            numbers = desc["numbers"] or [z for zs in desc["mixed"]["numbers"] for z in zs]
        if model == "morse":
            potential = builtin_morse(numbers, cfg.dtype)
        else:
            from ..api import load

            potential = load(model, dtype=cfg.dtype)

        chunk_records = cfg.chunk_records()
        run_info = {"steps": cfg.steps, "steps_done": 0, "record_every": cfg.record_every,
                    "chunk_records": chunk_records}
        restart_info = None
        if mode == "resume":
            run_info = dict(saved_extra["run"])
            chunk_records = int(run_info["chunk_records"])
            restart_info = saved_extra.get("restart")
        elif mode == "restart":
            restart_info = {"kind": "restart", "from": str(saved_path.resolve()),
                            "step": max(desc["step"]) if desc else None}
        chunk_steps = chunk_records * cfg.record_every
        if desc is not None:
            sim, state = Simulation.restore(saved_path, potential, ensemble=cfg.ensemble_settings(),
                                            safety=cfg.safety(), chunk_steps=chunk_steps)
        else:
            sim = cfg.simulation(potential, chunk_steps=chunk_steps)
            state = sim.init(frames if len(frames) > 1 else frames[0], replicas=replicas, seed=cfg.seed,
                             temperature=cfg.initial_temperature)
            if mode == "restart":  # an old state file: the structure gave the system, the file the state
                state, _ = load_state(saved_path)
                if state.positions.shape[0] != replicas or state.positions.shape[1] != len(frames[0]):
                    raise MDInputError(
                        f"{saved_path} holds {state.positions.shape[0]} replicas of {state.positions.shape[1]} atoms, "
                        f"but this run has {replicas} replicas of {len(frames[0])} atoms")
                restart_info = {"kind": "restart", "from": str(saved_path.resolve()),
                                "step": int(np.max(jax.device_get(state.step)))}
        resumes = list(saved_extra.get("resumed_at_step", [])) if mode == "resume" else []
        if mode == "resume":
            resumes.append(int(run_info["steps_done"]))
        book = {"config": cfg.model_dump(), "model": model, "structure": args.structure or saved_extra.get("structure"),
                "index": args.index, "run": run_info, "restart": restart_info, "resumed_at_step": resumes}
        writer = RunWriter(out, sim, replicas, book, resume_from=saved_extra if mode == "resume" else None)
        remaining = int(run_info["steps"]) - int(run_info["steps_done"])
        t0 = time.perf_counter()
        rep = {}
        with _stop_on_signals() as stop:
            def on_chunk(st, chunk):
                run_info["steps_done"] += chunk.n_frames * cfg.record_every
                writer.write_chunk(st, chunk)
                if stop["signal"]:
                    raise MDInterrupted(f"{stop['signal']}: stopped")

            try:
                if remaining > 0:
                    state, traj = sim.run(state, n_steps=remaining, record_every=cfg.record_every,
                                          progress=not args.quiet, on_chunk=on_chunk)
                    rep = traj.report
            except MDInterrupted as exc:
                print(f"jaxuft md: {exc} after {run_info['steps_done']} of {run_info['steps']} steps; the state "
                      f"is saved in {out / STATE_NAME}; continue with: jaxuft md --resume -o {out}", file=sys.stderr)
                return 130
        wall = time.perf_counter() - t0
        statistics = _statistics(writer.trajectory(), sim, out, getattr(args, "statistics", "numbers"))
        summary = {
            "model": model,
            "structure": book["structure"],
            "dtype": cfg.dtype,
            "seed": sim.seed,
            **sim.ensemble.describe(),
            "config": cfg.model_dump(),
            "replicas": replicas,
            "atoms": list(sim.sizes) if sim.mixed else sim.n_pad,
            "steps": int(run_info["steps"]),
            "record_every": cfg.record_every,
            "restart": restart_info,
            "resumed_at_step": resumes,
            "frames_per_replica": writer.frames_per_replica(),
            "wall_s": wall,
            "compile_s": rep.get("compile_s", 0.0),
            "compilations": rep.get("compilations", 0),
            "atom_steps_per_s": rep.get("atom_steps_per_s"),
            "atom_steps_per_s_incl_compile": rep.get("atom_steps_per_s_incl_compile"),
            "capacity_regrows": rep.get("capacity_regrows", 0),
            "neighbour_capacity": sim.spec.capacity,
            "model_capacity": sim.spec.model_capacity,
            "stops": rep.get("stops") or _stops(sim, state),
            "mean_temperature_K": writer.mean_temperature(),
            "systems": rep.get("systems"),
            "replica_exchange": (rep.get("replica_exchange") or {}).get("total"),
            "statistics": statistics,
            "trajectories": [replica_name(r) for r in range(replicas)],
            "versions": {"jax": jax.__version__, "python": platform.python_version(),
                         "backend": jax.default_backend(), "devices": len(jax.devices())},
        }
        atomic_write_json(out / SUMMARY_NAME, summary)
    if not args.quiet:
        stopped = [s for s in summary["stops"] if s["status"] != "running"]
        speed = rep.get("atom_steps_per_s")
        print(
            f"md {sim.ensemble.kind}: {replicas} x {summary['atoms']} atoms x {remaining} steps in {wall:.1f} s "
            + (f"({speed:.3g} atom-steps/s without compile, {rep['compilations']} compilations, "
               f"{rep['compile_s']:.1f} s compiling)" if speed else "(nothing left to run)")
            + f"; {len(stopped)} replica(s) stopped; wrote {out}",
            file=sys.stdout,
        )
        for s in stopped:
            print(f"  replica {s['replica']}: {s.get('message', s['status'])} after step {s['step']}")
        from ..analysis.ensemble import format_statistics

        for group, st in (statistics or {}).items():
            if "observables" in st:
                print(f"  {group} (last {1 - st['discard']:.0%} of the frames):")
                print("    " + format_statistics(st).replace("\n", "\n    "))
        for pair in (summary["replica_exchange"] or {}).get("pairs", []):
            print(f"  exchange {pair['pair'][0]:g} K <-> {pair['pair'][1]:g} K: {pair['accepted']}/{pair['attempts']} "
                  f"accepted (mean probability {pair['mean_probability'] or 0:.3f})")
    return 0


def _statistics(traj, sim, out, mode: str = "numbers"):
    """Ensemble statistics of the whole run for the summary (``full``: g(r) and figures beside it);
    None without frames or with ``off``."""
    from ..analysis.ensemble import json_statistics, run_statistics

    if mode == "off" or traj is None or traj.n_frames < 4:
        return None
    full = mode == "full"
    return json_statistics(run_statistics(traj, per_replica=sim.ensemble.per_replica, rdf=full,
                                          plot_dir=out if full else None))


def _stops(sim, state) -> list[dict]:
    import jax

    from .simulation import stop_reasons

    d = jax.device_get((state.status, state.step, state.stop_value))
    return stop_reasons(*d)
