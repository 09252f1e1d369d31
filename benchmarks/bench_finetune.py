"""Fine-tuning benchmarks: throughput vs mace-torch, the settings sweep behind the defaults, learning curves.

    python benchmarks/bench_finetune.py                      # mp0b-small, 10 chclca frames, batch 2
    python benchmarks/bench_finetune.py --preset tiny --frames 20 --record
    python benchmarks/bench_finetune.py sweep --out sweep.json [--record]      # SevenNet-0, few FT5 frames
    python benchmarks/bench_finetune.py curve --out curve.json [--record]      # held-out error vs #frames

``sweep`` and ``curve`` are described in :func:`sweep_main` (they need the paper data).

Both sides train every non-buffer parameter of the same randomly initialised
mace-torch model (built by ``tests/reference/mace_build.py`` in ``.venvs/mace``;
jaxuft converts the very same ``.model`` file) on the same frames with the same
settings: batch size, float32, loss weights E 1 / F 100 / S 1 (mace-torch's
``stress`` loss), AMSGrad Adam lr 0.01 with weight decay 5e-7, gradient clipping
at 10, no validation pass.  mace-torch runs ``mace.tools.train.take_step`` (its
trainer's step) over a ``torch_geometric`` DataLoader in a subprocess of its own
venv; jaxuft runs :func:`jaxuft.finetune.finetune`.

Reported: the first epoch (compilation / warm-up included) and the steady
throughput (frames/s) of the remaining epochs.  Without ``.venvs/mace`` only the
jaxuft side runs.  Frames: the first ``--frames`` of ``chclca/train/periodic/FT5.xyz``
(197 atoms) when the paper data is present, else random H/C/O boxes labelled by the
model itself.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
MACE_PY = REPO / ".venvs" / "mace" / "bin" / "python"
PAPER = (REPO / ".." / "shared" / "paper-data").resolve()

TORCH_SIDE = r'''
import json, os, sys, time
os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
import numpy as np, torch, ase.io
from mace import data as mdata, modules, tools
from mace.tools import torch_geometric, torch_tools
from mace.tools.train import take_step

model_path, xyz, batch_size, epochs, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
torch_tools.set_default_dtype("float32")
torch.manual_seed(seed)
model = torch.load(model_path, map_location="cpu", weights_only=False).float()
model.train()
z_table = tools.AtomicNumberTable([int(z) for z in model.atomic_numbers])
keys = mdata.KeySpecification(info_keys={"energy": "REF_energy", "stress": "REF_stress"}, arrays_keys={"forces": "REF_forces"})
atoms = ase.io.read(xyz, ":")
configs = [mdata.config_from_atoms(a, key_specification=keys) for a in atoms]
heads = list(getattr(model, "heads", ["Default"]))
data = [mdata.AtomicData.from_config(c, z_table=z_table, cutoff=float(model.r_max), heads=heads) for c in configs]
loader = torch_geometric.dataloader.DataLoader(dataset=data, batch_size=batch_size, shuffle=True, drop_last=False)
loss_fn = modules.WeightedEnergyForcesStressLoss(energy_weight=1.0, forces_weight=100.0, stress_weight=1.0)
params = [p for p in model.parameters() if p.requires_grad]
opt = torch.optim.Adam(params, lr=0.01, amsgrad=True, weight_decay=5e-7)
out_args = {"forces": True, "virials": False, "stress": True}
times = []
for epoch in range(epochs):
    t0 = time.perf_counter()
    for batch in loader:
        take_step(model=model, loss_fn=loss_fn, batch=batch, optimizer=opt, ema=None, output_args=out_args,
                  max_grad_norm=10.0, device=torch.device("cpu"))
    times.append(time.perf_counter() - t0)
print("RESULT " + json.dumps({"epoch_s": times, "n_frames": len(data), "threads": torch.get_num_threads(),
                               "torch": torch.__version__, "mace": __import__("mace").__version__}))
'''


def find_or_build_model(preset: str, seed: int) -> Path:
    hits = sorted(glob.glob(str(REPO / ".cache" / "reference" / "models" / f"{preset}-s{seed}-float32-*.model")))
    if hits:
        return Path(hits[0])
    out = REPO / ".cache" / "bench_finetune" / f"{preset}-s{seed}-float32.model"
    if out.exists():
        return out
    if not MACE_PY.exists():
        raise SystemExit(f"no {preset} model in .cache/reference/models and no .venvs/mace to build one "
                         "(tests/reference/make_venvs.sh mace)")
    subprocess.run([str(MACE_PY), str(REPO / "tests" / "reference" / "mace_build.py"), "--preset", preset,
                    "--seed", str(seed), "--dtype", "float32", "-o", str(out)], check=True)
    return out


def make_frames(n: int, pot, seed: int):
    """Frames with DFT labels (paper data) or labelled by ``pot`` (random boxes of its first elements)."""
    import ase.io
    import numpy as np
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    src = PAPER / "chclca" / "train" / "periodic" / "FT5.xyz"
    zs = set(pot.atomic_numbers)
    if src.exists() and {1, 3, 6, 7, 8, 17, 27} <= zs:
        return ase.io.read(str(src), f":{n}"), f"chclca/train/periodic/FT5.xyz[:{n}] (197 atoms, DFT labels)"
    rng = np.random.default_rng(seed)
    use = [z for z in (1, 6, 8) if z in zs] or list(pot.atomic_numbers[:3])
    frames = []
    while len(frames) < n:
        k, L = 48, 8.0
        a = Atoms(numbers=rng.choice(use, size=k), positions=rng.uniform(0, L, (k, 3)), cell=np.eye(3) * L, pbc=True)
        if a.get_all_distances(mic=True)[np.triu_indices(k, 1)].min() > 0.9:
            frames.append(a)
    for a, r in zip(frames, pot.predict(frames)):
        a.calc = SinglePointCalculator(a, energy=r["energy"], forces=r["forces"], stress=r["stress"])
    return frames, f"{n} random H/C/O boxes of 48 atoms labelled by the model"


def write_mace_xyz(frames, path: Path) -> None:
    import ase.io

    out = []
    for a in frames:
        b = a.copy()
        b.info["REF_energy"] = a.get_potential_energy()
        b.arrays["REF_forces"] = a.get_forces()
        b.info["REF_stress"] = a.get_stress(voigt=False)
        out.append(b)
    ase.io.write(str(path), out, format="extxyz")


def run_jaxuft(model_path: Path, frames, batch_size: int, epochs: int, seed: int) -> dict:
    import jaxuft
    from jaxuft.finetune import FinetuneConfig, finetune

    pot = jaxuft.load(model_path, dtype="float32")
    cfg = FinetuneConfig(epochs=epochs, batch_size=batch_size, seed=seed, valid_fraction=0.0, dtype="float32",
                         freeze="none", progress=False, keep="last")
    t0 = time.perf_counter()
    res = finetune(pot, frames, config=cfg)
    total = time.perf_counter() - t0
    times = [r["time_s"] for r in res.history if r["split"] == "train"]
    return {"epoch_s": times, "n_frames": len(frames), "setup_s": res.manifest["timings"]["setup_s"], "total_s": total,
            "n_trainable": res.manifest["model"]["n_trainable"]}


def run_torch(model_path: Path, xyz: Path, batch_size: int, epochs: int, seed: int) -> dict | None:
    if not MACE_PY.exists():
        print("(.venvs/mace missing: mace-torch side skipped)", file=sys.stderr)
        return None
    with tempfile.NamedTemporaryFile("w", suffix="_mace_side.py", delete=False) as f:
        f.write(TORCH_SIDE)
        script = f.name
    try:
        proc = subprocess.run([str(MACE_PY), script, str(model_path), str(xyz), str(batch_size), str(epochs), str(seed)],
                              capture_output=True, text=True)
    finally:
        os.unlink(script)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not line:
        print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
        raise SystemExit("the mace-torch side failed")
    return json.loads(line[-1][len("RESULT "):])


def steady(epoch_s, n_frames):
    rest = epoch_s[1:] or epoch_s
    return n_frames * len(rest) / sum(rest)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="mp0b-small", help="tests/reference/mace_build.py preset (default mp0b-small)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--frames", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=3, help="the first one is warm-up (compilation)")
    ap.add_argument("--no-torch", action="store_true", help="jaxuft side only")
    ap.add_argument("--record", action="store_true", help="append the table to benchmarks/RESULTS.md")
    args = ap.parse_args(argv)

    import jaxuft

    model_path = find_or_build_model(args.preset, args.seed)
    pot = jaxuft.load(model_path, dtype="float32")
    frames, desc = make_frames(args.frames, pot, args.seed)
    n_atoms = sum(len(a) for a in frames) / len(frames)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        xyz = Path(tmp) / "frames.xyz"
        write_mace_xyz(frames, xyz)
        results = {}
        if not args.no_torch:
            print("mace-torch ...", flush=True)
            results["mace-torch"] = run_torch(model_path, xyz, args.batch_size, args.epochs, args.seed)
        print("jaxuft ...", flush=True)
        results["jaxuft"] = run_jaxuft(model_path, frames, args.batch_size, args.epochs, args.seed)
    for side in ("mace-torch", "jaxuft"):
        r = results.get(side)
        if not r:
            continue
        fps = steady(r["epoch_s"], r["n_frames"])
        rows.append([side, args.preset, r["n_frames"], round(n_atoms), args.batch_size, round(r["epoch_s"][0], 1),
                     round(fps, 3), round(fps * n_atoms, 1)])
    if len(rows) == 2:
        ratio = rows[1][6] / rows[0][6]
        rows.append(["ratio jaxuft / mace-torch", "", "", "", "", "", round(ratio, 2), ""])
    header = ["trainer", "model", "frames", "atoms/frame", "batch", "epoch 1 s (incl. compile)", "frames/s", "atoms/s"]
    print(json.dumps(results, indent=1))
    if args.record:
        from benchmarks.results import append

        t = results.get("mace-torch") or {}
        append(
            "Fine-tuning throughput: jaxuft vs mace-torch trainer",
            header,
            rows,
            notes=(f"benchmarks/bench_finetune.py: randomly initialised mace-torch {args.preset} (float32; "
                   f"jaxuft converts the same .model), all non-buffer parameters train; {desc}; batch {args.batch_size}, "
                   f"{args.epochs} epochs (steady = epochs 2..{args.epochs}); loss E 1 / F 100 / S 1, AMSGrad lr 0.01, "
                   f"clip 10. mace-torch {t.get('mace', '-')} / torch {t.get('torch', '-')} with {t.get('threads', '-')} "
                   f"threads, mace.tools.train.take_step. Load average at the end "
                   f"{' / '.join(f'{x:.1f}' for x in os.getloadavg())} (shared machine)."),
        )
    else:
        w = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
        for r in [header] + rows:
            print("  ".join(str(v).ljust(x) for v, x in zip(r, w)))
    return 0


# ---- settings sweep and learning curves (SevenNet-0 on the paper frames) ----------------------
#: sweep candidates: name -> FinetuneConfig changes on top of the shared sweep settings
SWEEP = {
    "mace-torch (old defaults)": {"preset": "mace-torch"},
    "lr 1e-3": {"preset": "mace-torch", "optim": {"lr": 1e-3}},
    "lr 1e-4": {"preset": "mace-torch", "optim": {"lr": 1e-4}},
    "lr 1e-3 + E0s lstsq": {"preset": "mace-torch", "e0s": "lstsq", "optim": {"lr": 1e-3}},
    "lr 1e-3 + warmup 1 + EMA 0.99": {"preset": "mace-torch", "optim": {"lr": 1e-3, "warmup_epochs": 1.0, "ema_decay": 0.99}},
    "lr 1e-3, trunk x0.1": {"preset": "mace-torch", "optim": {"lr": 1e-3, "group_lr": {"trunk": 0.1}}},
    "lr 1e-4 + E0s lstsq": {"preset": "mace-torch", "e0s": "lstsq", "optim": {"lr": 1e-4}},
    "lr 1e-3 + clip 1": {"preset": "mace-torch", "optim": {"lr": 1e-3, "clip_grad": 1.0}},
    "new defaults": {},
}


def _paper_frames(name: str, n: int | None):
    from ase.io import read

    frames = read(str(PAPER / "chclca" / name), ":")
    if n is None or n >= len(frames):
        return frames
    import numpy as np

    idx = np.unique(np.linspace(0, len(frames) - 1, n).round().astype(int))
    return [frames[i] for i in idx]


def _config(changes: dict, epochs: int, batch_size: int):
    """The sweep's FinetuneConfig: ``changes`` (may name a preset) with the fixed sweep settings."""
    from jaxuft.finetune import FinetuneConfig

    changes = dict(changes)
    preset = changes.pop("preset", None)
    base = FinetuneConfig.preset(preset) if preset else FinetuneConfig()
    d = base.to_dict()
    for k, v in changes.items():
        if isinstance(v, dict) and isinstance(d.get(k), dict):
            d[k] = {**d[k], **v}
        else:
            d[k] = v
    # measured: the model the settings produce after a fixed number of epochs (no selection)
    d.update(epochs=epochs, batch_size=batch_size, dtype="float32", progress=False, keep="last", allow_worse=True)
    return FinetuneConfig(**d)


def _test_errors(pot, test) -> dict:
    from jaxuft.finetune import evaluate

    m = evaluate(pot, test, batch_size=2).overall
    return {"energy_rmse": m["energy_rmse"], "forces_rmse": m["forces_rmse"]}


def _run_one(pot, train, test, cfg) -> dict:
    from jaxuft.finetune import finetune

    t0 = time.perf_counter()
    res = finetune(pot, train, valid=[], config=cfg)  # no validation: the settings, not the selection
    out = _test_errors(res.potential, test)
    out["train_loss_last"] = [r["loss"] for r in res.history if r["split"] == "train"][-1]
    out["seconds"] = time.perf_counter() - t0
    return out


def _load_json(path):
    p = Path(path)
    return json.loads(p.read_text()) if p.exists() else {}


def sweep_main(argv) -> int:
    """``sweep``: each SWEEP candidate fine-tunes SevenNet-0 on a few FT5 frames for a fixed number
    of epochs (no model selection, so the settings themselves are measured); the score is the
    energy/force RMSE on frames of the independent test set.  ``curve``: the chosen defaults on
    2, 4, 8, 16... frames of FT5 and N-50, the foundation model as the baseline row.  Results
    go to ``--out`` (JSON, one entry per finished run, so an interrupted sweep keeps its rows)."""
    ap = argparse.ArgumentParser(prog=f"bench_finetune.py {argv[0]}", description=sweep_main.__doc__)
    ap.add_argument("--out", required=True, help="JSON file that collects the rows (resumed if it exists)")
    ap.add_argument("--frames", type=int, default=4, help="sweep: training frames from FT5 (default 4)")
    ap.add_argument("--sizes", default="2,4,8,16", help="curve: training-set sizes (default 2,4,8,16)")
    ap.add_argument("--sets", default="train/periodic/FT5.xyz,train/naive/N-50.xyz", help="curve: training files")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--test-frames", type=int, default=4, help="frames of test/independent.xyz (spread evenly)")
    ap.add_argument("--only", default=None, help="sweep: candidate names separated by ';'")
    ap.add_argument("--record", action="store_true", help="append the table to benchmarks/RESULTS.md")
    ap.add_argument("--table-only", action="store_true", help="run nothing: print (and --record) the rows in --out")
    args = ap.parse_args(argv[1:])
    if not (PAPER / "chclca").is_dir():
        print(f"paper data not found at {PAPER}", file=sys.stderr)
        return 2
    import jaxuft

    pot = jaxuft.load("sevennet-0", dtype="float32")
    test = _paper_frames("test/independent.xyz", args.test_frames)
    rows = _load_json(args.out)
    if "foundation" not in rows:
        rows["foundation"] = _test_errors(pot, test)
        Path(args.out).write_text(json.dumps(rows, indent=1))
    if args.table_only:
        pass
    elif argv[0] == "sweep":
        train = _paper_frames("train/periodic/FT5.xyz", args.frames)
        names = args.only.split(";") if args.only else list(SWEEP)
        for name in names:
            if name in rows:
                continue
            print(f"--- {name}", flush=True)
            cfg = _config(SWEEP[name], args.epochs, args.batch_size)
            rows[name] = _run_one(pot, train, test, cfg)
            print(name, rows[name], flush=True)
            Path(args.out).write_text(json.dumps(rows, indent=1))
    else:
        for src in args.sets.split(","):
            for n in [int(x) for x in args.sizes.split(",")]:
                key = f"{Path(src).stem} {n}"
                if key in rows:
                    continue
                print(f"--- {key}", flush=True)
                train = _paper_frames(src, n)
                rows[key] = _run_one(pot, train, test, _config({}, args.epochs, args.batch_size))
                rows[key]["n_train"] = len(train)
                print(key, rows[key], flush=True)
                Path(args.out).write_text(json.dumps(rows, indent=1))
    base = rows["foundation"]
    header = ["run", "E RMSE meV/atom", "F RMSE meV/Å", "dE vs foundation", "dF vs foundation", "s"]
    table = [["foundation (SevenNet-0)", round(base["energy_rmse"], 2), round(base["forces_rmse"], 1), "", "", ""]]
    for k, r in rows.items():
        if k == "foundation":
            continue
        table.append([k, round(r["energy_rmse"], 2), round(r["forces_rmse"], 1),
                      f"{r['energy_rmse'] - base['energy_rmse']:+.2f}", f"{r['forces_rmse'] - base['forces_rmse']:+.1f}",
                      round(r["seconds"])])
    w = [max(len(str(r[i])) for r in table + [header]) for i in range(len(header))]
    for r in [header] + table:
        print("  ".join(str(v).ljust(x) for v, x in zip(r, w)))
    if args.record:
        from benchmarks.results import append

        from jaxuft.finetune import FinetuneConfig

        d = FinetuneConfig()
        defaults = (f"the defaults (lr {d.optim.lr}, warm-up {d.optim.warmup_epochs} epoch, EMA {d.optim.ema_decay}, "
                    f"clip {d.optim.clip_grad}, e0s {d.e0s!r})")
        what = (f"{args.frames} evenly spaced FT5 frames; candidates are changes to the mace-torch preset "
                f"(lr 0.01, no warm-up, no EMA, model E0s), 'new defaults' is {defaults}" if argv[0] == "sweep"
                else f"N evenly spaced frames of each of {args.sets} at {defaults}")
        append(
            "Fine-tuning settings sweep (SevenNet-0, few frames)" if argv[0] == "sweep"
            else "Fine-tuning learning curve (SevenNet-0, new defaults)",
            header, table,
            notes=(f"benchmarks/bench_finetune.py {argv[0]}: SevenNet-0 float32, training on {what}, "
                   f"{args.epochs} epochs at batch {args.batch_size}, the model after the last epoch (no selection); "
                   + (f"not run (CPU time): {', '.join(k for k in SWEEP if k not in rows)}; " if argv[0] == "sweep" else "")
                   + f"errors on {len(test)} evenly spaced frames of test/independent.xyz. CPU-limited: epochs and "
                   f"frames cut to fit a shared 2-core machine (load average "
                   f"{' / '.join(f'{x:.1f}' for x in os.getloadavg())})."),
        )
    return 0


if __name__ == "__main__":
    from jaxuft import host_memory

    host_memory.tune()  # jaxuft side runs with the allocator the CLI uses (jaxuft/host_memory.py)
    if len(sys.argv) > 1 and sys.argv[1] in ("sweep", "curve"):
        sys.exit(sweep_main(sys.argv[1:]))
    sys.exit(main())
