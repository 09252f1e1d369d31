"""``jaxuft`` command line: thin wrappers that parse, call the library, and print.

    jaxuft convert SRC DEST                 torch checkpoint -> jaxuft model (no torch)
    jaxuft predict --model M IN.xyz -o OUT.xyz
    jaxuft info M                           what a model is
    jaxuft md / finetune / evaluate / qres / fetch / models   (see --help of each)
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time

#: modules that contribute subcommands through ``register(subparsers)``
SUBCOMMAND_MODULES = (
    "jaxuft.checkpoints.zoo",
    "jaxuft.md.cli",
    "jaxuft.finetune.cli",
    "jaxuft.uq.cli",
    "jaxuft.analysis.cli",
)


def _cmd_convert(args) -> int:
    from .api import convert

    t0 = time.perf_counter()
    dest = convert(args.src, args.dest, overwrite=args.overwrite, head=args.head)
    from .checkpoints.format import load_model

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

    pot = load(args.model, dtype=args.dtype)
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
        hosts = pot.host_graphs([atoms])
        capacity = pot.capacity_for(hosts, capacity, headroom=1.1)
        res = pot.predict(atoms, capacity=capacity, hosts=hosts)
        new = atoms.copy()
        results = {"energy": res["energy"], "free_energy": res["energy"], "forces": res["forces"], "energies": res["energies"]}
        if "stress" in res:
            results["stress"] = res["stress"]
        new.calc = SinglePointCalculator(new, **results)
        out.append(new)
    dt = time.perf_counter() - t0
    write(args.output, out, format="extxyz")
    n_atoms = sum(len(a) for a in out)
    if not args.quiet:
        e = np.array([a.get_potential_energy() / len(a) for a in out])
        print(f"wrote {len(out)} frames to {args.output} ({n_atoms / dt:.0f} atoms/s incl. compile); "
              f"energy/atom mean {e.mean():.4f} eV")
    return 0


def _cmd_info(args) -> int:
    from .api import load

    pot = load(args.model, dtype="float32")
    from ase.data import chemical_symbols

    cfg = {k: v for k, v in pot.config.items() if k not in ("layers", "atomic_numbers", "metadata")}
    cfg["elements"] = " ".join(chemical_symbols[z] for z in pot.atomic_numbers)
    n_params = sum(int(x.size) for x in __import__("jax").tree_util.tree_leaves(pot.params))
    cfg["n_params"] = n_params
    print(json.dumps(cfg, indent=2, default=str))
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
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("info", help="print a model's configuration")
    p.add_argument("model")
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
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    from .errors import JaxuftError

    try:
        return int(args.func(args) or 0)
    except (JaxuftError, FileNotFoundError, FileExistsError) as exc:
        print(f"jaxuft {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
