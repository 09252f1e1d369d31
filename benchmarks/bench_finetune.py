"""Fine-tuning throughput: jaxuft (optax) vs mace-torch's trainer, same MACE model, same frames.

    python benchmarks/bench_finetune.py                      # mp0b-small, 10 chclca frames, batch 2
    python benchmarks/bench_finetune.py --preset tiny --frames 20 --record

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


if __name__ == "__main__":
    sys.exit(main())
