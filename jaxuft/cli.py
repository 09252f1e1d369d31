"""``jaxuft`` command line: thin wrappers that parse, call the library, and print.

    jaxuft convert SRC DEST                 torch checkpoint -> jaxuft model (no torch)
    jaxuft predict --model M IN.xyz -o OUT.xyz
    jaxuft info M                           what a model is
    jaxuft md / finetune / evaluate / qres / fetch / models / bench   (see --help of each)
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

#: modules that contribute subcommands through ``register(subparsers)``
SUBCOMMAND_MODULES = (
    "jaxuft.checkpoints.zoo",
    "jaxuft.md.cli",
    "jaxuft.finetune.cli",
    "jaxuft.uq.cli",
    "jaxuft.analysis.cli",
    "jaxuft.workflows.cli",
    "jaxuft.bench.cli",
)


class CLIError(Exception):
    """A one-line command-line error (exit status 2)."""


def _check_writable_dir(directory: Path, what: str, flag: str) -> None:
    """Fail now, before any work, if nothing can be created in ``directory`` (or its nearest existing
    ancestor, which the command would create it under).  Tries a real file: permissions alone
    mislead for root and on read-only mounts."""
    d = directory
    while not d.exists():
        if d.parent == d:
            break
        d = d.parent
    if not d.is_dir():
        raise CLIError(f"cannot write {what}: {d} is not a directory; choose another {flag}")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".jaxuft-write-test-", dir=d)
    except OSError as exc:
        raise CLIError(f"cannot write {what}: {d} is not writable ({exc.strerror}); choose another {flag}") from None
    os.close(fd)
    os.unlink(tmp)


def check_output_file(path: str | os.PathLike, flag: str = "-o") -> Path:
    """An output *file* path that can be written (checked before any work)."""
    p = Path(path)
    if p.is_dir():
        raise CLIError(f"{flag} {p} is a directory; give a file path, e.g. {flag} {p / 'predictions.xyz'}")
    if p.exists() and not os.access(p, os.W_OK):
        raise CLIError(f"{flag} {p} exists and is read-only; choose another {flag} or make it writable")
    _check_writable_dir(p.parent if str(p.parent) else Path("."), str(p), flag)
    return p


def _cmd_convert(args) -> int:
    from .api import convert
    from .checkpoints.format import is_converted_model, load_model

    dest = Path(args.dest)
    if os.path.lexists(dest):
        if not args.overwrite:
            raise CLIError(f"{dest} already exists; pass --overwrite to replace it, or choose another DEST")
        if not (dest.is_dir() and (is_converted_model(dest) or not any(dest.iterdir()))):
            raise CLIError(f"{dest} exists and is not a jaxuft model directory; --overwrite replaces only a "
                           "converted model or an empty directory: choose another DEST")
    _check_writable_dir(dest.parent if str(dest.parent) else Path("."), str(dest), "DEST")
    if not Path(args.src).is_file():
        raise CLIError(f"{args.src}: no such checkpoint file")
    t0 = time.perf_counter()
    dest = convert(args.src, args.dest, overwrite=args.overwrite, head=args.head)

    config, _ = load_model(dest)
    print(
        f"converted {args.src} -> {dest} in {time.perf_counter() - t0:.1f} s "
        f"(family {config['family']}, {len(config['atomic_numbers'])} elements, r_max {config['r_max']} Å)"
    )
    return 0


def _cmd_predict(args) -> int:
    import numpy as np
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import iread, write
    from tqdm import tqdm

    from .api import load
    from .fileio import atomic_open

    check_output_file(args.output)
    if not Path(args.input).is_file():
        raise CLIError(f"{args.input}: no such structure file")
    if args.min_distance is not None and not args.min_distance >= 0:
        raise CLIError(f"--min-distance must be >= 0 Å, got {args.min_distance}")
    pot = load(args.model, dtype=args.dtype, verify=not args.no_verify)
    out = []
    t0 = time.perf_counter()
    try:
        frames = list(iread(args.input, index=args.index))
    except Exception as exc:  # ASE raises many types for unreadable files
        raise SystemExit(f"jaxuft predict: cannot read {args.input}: {exc}") from None
    if not frames:
        raise SystemExit(f"jaxuft predict: {args.input} holds no structures")
    capacity = None  # one padded shape for similar frames: compile once, not per frame
    for k, atoms in enumerate(tqdm(frames, desc="predict", unit="frame", disable=args.quiet)):
        hosts = pot.host_graphs([atoms], args.min_distance)
        capacity = pot.capacity_for(hosts, capacity, headroom=1.1)
        res = pot.predict(atoms, capacity=capacity, hosts=hosts)
        new = atoms.copy()
        results = {"energy": res["energy"], "free_energy": res["energy"], "forces": res["forces"], "energies": res["energies"]}
        if "stress" in res:
            results["stress"] = res["stress"]
        new.calc = SinglePointCalculator(new, **results)
        out.append(new)
    dt = time.perf_counter() - t0
    with atomic_open(args.output, "w") as f:  # a full disk or Ctrl-C leaves no truncated file
        write(f, out, format="extxyz")
    n_atoms = sum(len(a) for a in out)
    if not args.quiet:
        e = np.array([a.get_potential_energy() / len(a) for a in out])
        print(f"wrote {len(out)} frames to {args.output} ({n_atoms / dt:.0f} atoms/s incl. compile); "
              f"energy/atom mean {e.mean():.4f} eV")
    return 0


def _cmd_info(args) -> int:
    from .api import load
    from .fileio import json_clean

    pot = load(args.model, dtype="float32", verify=not args.no_verify)
    from ase.data import chemical_symbols

    cfg = {k: v for k, v in pot.config.items() if k not in ("layers", "atomic_numbers", "metadata")}
    cfg["elements"] = " ".join(chemical_symbols[z] for z in pot.atomic_numbers)
    n_params = sum(int(x.size) for x in __import__("jax").tree_util.tree_leaves(pot.params))
    cfg["n_params"] = n_params
    print(json.dumps(json_clean(cfg), indent=2, default=str, allow_nan=False))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxuft", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"jaxuft {__import__('jaxuft').__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("convert", help="convert a mace-torch .model or SevenNet .pth checkpoint (no torch needed)")
    p.add_argument("src", help="torch checkpoint file")
    p.add_argument("dest", help="output model directory (config.json + params.safetensors)")
    p.add_argument("--head", default=None, help="head of a multi-head MACE model (default: like mace-torch)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing converted model at DEST")
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser("predict", help="energies, forces and stresses for every frame of a structure file")
    p.add_argument("input", help="structure file ASE can read (extxyz, traj, cif, POSCAR, ...)")
    p.add_argument("-o", "--output", required=True, help="output extxyz with energy/forces/stress results")
    p.add_argument("--model", default="sevennet-0",
                   help="converted model directory, torch checkpoint, or model-zoo name (default: sevennet-0, "
                        "the built-in foundation model, fetched from the package index on first use)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--index", default=":", help="frames to read (ASE index syntax, default all)")
    p.add_argument("--min-distance", type=float, default=None, metavar="A",
                   help="refuse structures with two atoms closer than this (Å, default 0.5)")
    p.add_argument("--no-verify", action="store_true",
                   help="skip the sha256 check of a converted model's files (for a model you edited on purpose)")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("info", help="print a model's configuration")
    p.add_argument("model")
    p.add_argument("--no-verify", action="store_true", help="skip the sha256 check of the model's files")
    p.set_defaults(func=_cmd_info)

    for name in SUBCOMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ImportError as exc:
            if exc.name and exc.name.startswith("jaxuft"):
                continue  # that part of jaxuft is not installed in this build
            raise
        mod.register(sub)
    return parser


def main(argv=None) -> int:
    from . import compile_cache, host_memory

    host_memory.tune()  # the command line opts in to the tuned allocator (see jaxuft/host_memory.py)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    if getattr(args, "compile_cache", True):  # and to JAX's on-disk compilation cache (jaxuft/compile_cache.py)
        compile_cache.enable()  # (``jaxuft bench`` measures compile times: it sets compile_cache=False)
    from .errors import JaxuftError

    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"jaxuft {args.command}: interrupted (Ctrl-C)", file=sys.stderr)
        return 130
    except (CLIError, JaxuftError, FileNotFoundError, FileExistsError) as exc:
        print(f"jaxuft {args.command}: error: {flag_wording(str(exc))}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk, a vanished directory...: one line, no traceback
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        print(f"jaxuft {args.command}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2


_KWARG = re.compile(r"\b(overwrite|resume|force|no_verify)=True\b")


def flag_wording(message: str) -> str:
    """Library messages name Python keywords (``overwrite=True``); on the command line say ``--overwrite``."""
    message = message.replace("verify=False", "--no-verify").replace("--no-verify / --no-verify", "--no-verify")
    return _KWARG.sub(lambda m: "--" + m.group(1).replace("_", "-"), message)


if __name__ == "__main__":
    sys.exit(main())
