"""Build a randomly initialised mace-torch ``ScaleShiftMACE`` and save it like a release file.

Runs INSIDE the mace reference venv (``tests/reference/make_venvs.sh mace``)::

    .venvs/mace/bin/python tests/reference/mace_build.py --preset mp0b-small --seed 0 \
        -o .cache/reference/mp0b-small-s0.model [--dtype float64|float32]

The model is saved with ``torch.save(model, path)``: a whole-module pickle in torch's zip
format, exactly how ``mace_run_train`` writes ``*.model`` files (and how the MACE-MP
release files were written, although those were pickled by older mace versions).

Random initialisation: mace's own init, then every trainable parameter gets
``N(0, 0.1 * std(param) + 0.05)`` noise from ``--seed`` (so no weight is exactly 0 or 1 and
parity cannot pass by accident); E0s, scale/shift and avg_num_neighbors are drawn from the
same seed.  The model is always constructed and perturbed in float64; ``--dtype float32``
then casts it with ``model.float()`` (parameters *and* floating buffers), so the float32
model has the float64 model's values rounded.

Hyperparameter sources (cited per preset below):
  [S-0]   ACEsuit/mace-mp, mace_mp_0/2023-12-10-mace-128-L0*.sh, 2023-12-03-mace-128-L1.sh,
          2024-01-07-mace-128-L2.sh (training scripts of the MACE-MP-0 small/medium/large files)
  [S-0b]  ACEsuit/mace-mp, mace_mp_0b/mace-agnesi-small.sh (MACE-MP-0b small)
  [S-0b3] ACEsuit/mace-mp, mace_mp_0b3/mace-mp0-b3.sh (MACE-MP-0b3 medium)
  [MACE]  ACEsuit/mace: ``--model="MACE"`` builds ``ScaleShiftMACE`` with
          ``interaction_cls_first=RealAgnosticInteractionBlock`` (hard-coded up to v0.3.x;
          0.3.16 allows the Density variant too) and ``atomic_inter_shift=0.0``
          (mace/cli/run_train.py @ v0.3.4/v0.3.5; mace/tools/model_script_utils.py @ 0.3.16);
          ``--model="ScaleShiftMACE"`` takes ``--interaction_first`` from the command line.
  [ARGS]  mace/tools/arg_parser.py defaults (unchanged v0.3.4 -> 0.3.16):
          num_cutoff_basis=5, radial_MLP="[64, 64, 64]", gate="silu",
          interaction="RealAgnosticResidualInteractionBlock", radial_type="bessel",
          use_reduced_cg=False (NB: the ``MACE.__init__`` keyword default is True; the CLI
          default and all release files -- which predate the flag -- use the full,
          non-reduced CG basis, so we pass False explicitly).
  [MBD]   janosh/matbench-discovery models/mace/mace-mp-0.yml (model_params: 4688656 for
          2023-12-03-mace-128-L1) and mace-mpa-0.yml (model_params: 9063204).  The
          parameter count of our mp0-medium / mpa0-medium builds reproduces these exactly
          (checked by ``--check-params``), which confirms the architecture.
  avg_num_neighbors: the real values are computed from the training set at train time and
          are not published as text; we draw a realistic value U(20, 60) from the seed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from typing import Any, Dict

import numpy as np

os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
warnings.filterwarnings("ignore", category=UserWarning)

import torch  # noqa: E402
from e3nn import o3  # noqa: E402

from mace import modules  # noqa: E402
from mace.tools import torch_tools  # noqa: E402

# Z = 1..89: the 89 elements of the MACE-MP models (MPtrj covers H..Ac, Z_max = 89).
MP_ZS = list(range(1, 90))

# Every preset is the keyword set handed to ``ScaleShiftMACE`` (strings are resolved
# below), plus two non-constructor keys: "heads" (default ["Default"]) and
# "expected_params" (exact parameter count of the real release file, when known).
PRESETS: Dict[str, Dict[str, Any]] = {
    # MACE-MP-0b small, mace_agnesi_small.model  [S-0b] + [MACE] + [ARGS]
    "mp0b-small": dict(
        atomic_numbers=MP_ZS,
        r_max=6.0,  # [S-0b] --r_max=6.0
        num_bessel=8,  # [S-0b] --num_radial_basis=8
        num_polynomial_cutoff=5,  # [ARGS] --num_cutoff_basis default 5
        max_ell=3,  # [S-0b] --max_ell=3
        hidden_irreps="128x0e",  # [S-0b] --num_channels=128 --max_L=0
        MLP_irreps="16x0e",  # [S-0b] --MLP_irreps="16x0e"
        correlation=3,  # [S-0b] --correlation=3
        num_interactions=2,  # [S-0b] --num_interactions=2
        gate="silu",  # [ARGS] --gate default
        interaction_cls_first="RealAgnosticInteractionBlock",  # [MACE] --model="MACE"
        interaction_cls="RealAgnosticResidualInteractionBlock",  # [ARGS] --interaction default
        radial_MLP=[64, 64, 64],  # [ARGS]
        radial_type="bessel",  # [ARGS]
        distance_transform="Agnesi",  # [S-0b] --distance_transform="Agnesi"
        pair_repulsion=True,  # [S-0b] --pair_repulsion (ZBL)
        use_reduced_cg=False,  # [ARGS]
        model_kind="MACE",  # [S-0b] --model="MACE" -> atomic_inter_shift = 0.0 in reality
    ),
    # MACE-MP-0 small, 2023-12-10-mace-128-L0_energy_epoch-249.model  [S-0] + [ARGS]
    "mp0-small": dict(
        atomic_numbers=MP_ZS,
        r_max=6.0,
        num_bessel=10,  # [S-0] --num_radial_basis=10
        num_polynomial_cutoff=5,
        max_ell=3,
        hidden_irreps="128x0e",  # [S-0] --max_L=0
        MLP_irreps="16x0e",
        correlation=3,
        num_interactions=2,
        gate="silu",
        interaction_cls_first="RealAgnosticResidualInteractionBlock",  # [S-0] --interaction_first
        interaction_cls="RealAgnosticResidualInteractionBlock",  # [S-0] --interaction
        radial_MLP=[64, 64, 64],
        radial_type="bessel",
        distance_transform="None",
        pair_repulsion=False,
        use_reduced_cg=False,
        model_kind="ScaleShiftMACE",  # [S-0] --model="ScaleShiftMACE"
    ),
    # MACE-MP-0 medium, 2023-12-03-mace-128-L1_epoch-199.model  [S-0] + [ARGS]
    "mp0-medium": dict(
        atomic_numbers=MP_ZS,
        r_max=6.0,
        num_bessel=10,
        num_polynomial_cutoff=5,
        max_ell=3,
        hidden_irreps="128x0e+128x1o",  # [S-0] --max_L=1
        MLP_irreps="16x0e",
        correlation=3,
        num_interactions=2,
        gate="silu",
        interaction_cls_first="RealAgnosticResidualInteractionBlock",
        interaction_cls="RealAgnosticResidualInteractionBlock",
        radial_MLP=[64, 64, 64],
        radial_type="bessel",
        distance_transform="None",
        pair_repulsion=False,
        use_reduced_cg=False,
        model_kind="ScaleShiftMACE",
        expected_params=4688656,  # [MBD] mace-mp-0.yml
    ),
    # MACE-MP-0 large, 2024-01-07-mace-128-L2_epoch-199.model  [S-0] + [ARGS]
    # (mace_mp(model="large") downloads MACE_MPtrj_2022.9.model, an older 128x0e+128x1o+128x2e
    # model; this preset follows the published 2024-01-07 L2 training script.)
    "mp0-large": dict(
        atomic_numbers=MP_ZS,
        r_max=6.0,
        num_bessel=10,
        num_polynomial_cutoff=5,
        max_ell=3,
        hidden_irreps="128x0e+128x1o+128x2e",  # [S-0] --max_L=2
        MLP_irreps="16x0e",
        correlation=3,
        num_interactions=2,
        gate="silu",
        interaction_cls_first="RealAgnosticResidualInteractionBlock",
        interaction_cls="RealAgnosticResidualInteractionBlock",
        radial_MLP=[64, 64, 64],
        radial_type="bessel",
        distance_transform="None",
        pair_repulsion=False,
        use_reduced_cg=False,
        model_kind="ScaleShiftMACE",
    ),
    # MACE-MPA-0 medium, mace-mpa-0-medium.model: the MACE-MP-0b3 medium architecture
    # [S-0b3] (density-normalised interaction blocks, Agnesi, ZBL, 10 Bessel, L=1) trained
    # on MPtrj + sAlex.  No public training script for MPA-0 itself; the architecture is
    # confirmed by the exact parameter count 9063204 [MBD].
    "mpa0-medium": dict(
        atomic_numbers=MP_ZS,
        r_max=6.0,  # [S-0b3] --r_max=6.0 ; [MBD] graph_construction_radius 6.0
        num_bessel=10,  # [S-0b3] --num_radial_basis=10
        num_polynomial_cutoff=5,
        max_ell=3,
        hidden_irreps="128x0e+128x1o",  # [S-0b3] --max_L=1
        MLP_irreps="16x0e",
        correlation=3,
        num_interactions=2,
        gate="silu",
        interaction_cls_first="RealAgnosticDensityInteractionBlock",  # [S-0b3]
        interaction_cls="RealAgnosticDensityResidualInteractionBlock",  # [S-0b3]
        radial_MLP=[64, 64, 64],
        radial_type="bessel",
        distance_transform="Agnesi",  # [S-0b3]
        pair_repulsion=True,  # [S-0b3]
        use_reduced_cg=False,
        model_kind="MACE",  # [S-0b3] --model="MACE"
        expected_params=9063204,  # [MBD] mace-mpa-0.yml
    ),
    # Fast test models (the variants below are "tiny" with a few keys changed).  "tiny" has the mp0b feature set (non-residual first block,
    # Agnesi, ZBL) but L=1 so that equivariant paths are exercised.
    "tiny": dict(
        atomic_numbers=[1, 6, 8],
        r_max=5.0,
        num_bessel=8,
        num_polynomial_cutoff=5,
        max_ell=3,
        hidden_irreps="16x0e+16x1o",
        MLP_irreps="16x0e",
        correlation=3,
        num_interactions=2,
        gate="silu",
        interaction_cls_first="RealAgnosticInteractionBlock",
        interaction_cls="RealAgnosticResidualInteractionBlock",
        radial_MLP=[32, 32, 32],
        radial_type="bessel",
        distance_transform="Agnesi",
        pair_repulsion=True,
        use_reduced_cg=False,
        model_kind="MACE",
    ),
}


# Small 2-head model, the layout ``mace_run_train --multiheads_finetuning`` produces:
# heads sorted with "pt_head" FIRST, then the user head "Default"
# (mace/cli/run_train.py: ``sorted(heads, key=lambda x: -1000 if x == "pt_head" else 0)``;
# mace/tools/multihead_tools.py: prepare_default_head -> "Default").
# ScaleShiftMACE(heads=[...]) builds it directly: readouts emit len(heads) x 0e, the
# non-linear readout has (len(heads) * MLP_irreps) hidden irreps with mask_head,
# atomic_energies is [n_heads, n_elements], scale/shift are [n_heads].
PRESETS["multihead"] = dict(PRESETS["tiny"], atomic_numbers=[1, 6, 8, 14], heads=["pt_head", "Default"])
# tiny with the MP-0 feature set (residual first block, no Agnesi / ZBL)
PRESETS["tiny-mp0"] = dict(
    PRESETS["tiny"],
    num_bessel=10,
    interaction_cls_first="RealAgnosticResidualInteractionBlock",
    distance_transform="None",
    pair_repulsion=False,
    model_kind="ScaleShiftMACE",
)
# tiny with the MPA-0 / 0b3 feature set (density-normalised blocks)
PRESETS["tiny-density"] = dict(
    PRESETS["tiny"],
    num_bessel=10,
    interaction_cls_first="RealAgnosticDensityInteractionBlock",
    interaction_cls="RealAgnosticDensityResidualInteractionBlock",
)


def build(preset: str, seed: int) -> torch.nn.Module:
    """Construct (float64) and randomly perturb the preset model."""
    cfg = dict(PRESETS[preset])
    cfg.pop("expected_params", None)
    model_kind = cfg.pop("model_kind")
    heads = cfg.pop("heads", None)
    n_heads = 1 if heads is None else len(heads)
    zs = cfg["atomic_numbers"]
    rng = np.random.default_rng(seed)

    # Realistic-looking random statistics (drawn before anything else, from the seed).
    e0 = rng.uniform(-10.0, -0.5, size=(n_heads, len(zs)))
    atomic_energies = e0[0] if heads is None else e0  # [n_el] or [n_heads, n_el]
    scale = rng.uniform(0.5, 1.5, size=n_heads)
    shift = rng.uniform(-0.5, 0.5, size=n_heads)
    avg_num_neighbors = float(rng.uniform(20.0, 60.0))

    torch_tools.set_default_dtype("float64")
    torch.manual_seed(seed)
    kwargs = dict(
        cfg,
        num_elements=len(zs),
        hidden_irreps=o3.Irreps(cfg["hidden_irreps"]),
        MLP_irreps=o3.Irreps(cfg["MLP_irreps"]),
        gate=modules.gate_dict[cfg["gate"]],
        interaction_cls_first=modules.interaction_classes[cfg["interaction_cls_first"]],
        interaction_cls=modules.interaction_classes[cfg["interaction_cls"]],
        atomic_energies=atomic_energies,
        avg_num_neighbors=avg_num_neighbors,
        atomic_inter_scale=float(scale[0]) if heads is None else scale.tolist(),
        atomic_inter_shift=float(shift[0]) if heads is None else shift.tolist(),
    )
    if heads is not None:
        kwargs["heads"] = heads
    model = modules.ScaleShiftMACE(**kwargs)
    del model_kind  # only documents how the real file was built (shift=0 for "MACE")

    # Perturb every trainable parameter (skip EmptyParam: zero-weight placeholders for
    # symmetric-contraction paths whose U matrix is identically zero; they never
    # contribute and are zeros in real files too).
    gen = torch.Generator().manual_seed(seed + 1_000_003)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if type(p).__name__ == "EmptyParam":
                continue
            std = float(p.std()) if p.numel() > 1 else 0.0
            noise = torch.randn(p.shape, generator=gen, dtype=p.dtype)
            p.add_(noise * (0.1 * std + 0.05))
            # guard against the (measure-zero) chance of an exact 0 or 1
            p.copy_(torch.where((p == 0) | (p == 1), p + 1e-3, p))
    model.eval()
    return model


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", required=True, choices=sorted(PRESETS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("-o", "--output", required=True)
    ap.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    ap.add_argument(
        "--check-params",
        action="store_true",
        help="fail if the parameter count differs from the real release file's (when known)",
    )
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    model = build(args.preset, args.seed)
    if args.dtype == "float32":
        model = model.float()
    n_params = sum(p.numel() for p in model.parameters())
    expected = PRESETS[args.preset].get("expected_params")
    if args.check_params and expected is not None and n_params != expected:
        print(f"parameter count {n_params} != expected {expected}", file=sys.stderr)
        return 1
    out_dir = os.path.dirname(os.path.abspath(args.output))
    os.makedirs(out_dir, exist_ok=True)
    # Save under the final file name (torch names the zip's top folder after the file
    # stem), in a private temp dir, then move atomically into place.
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".build-") as tmp_dir:
        tmp = os.path.join(tmp_dir, os.path.basename(args.output))
        torch.save(model, tmp)
        os.replace(tmp, args.output)
    info = {
        "preset": args.preset,
        "seed": args.seed,
        "dtype": args.dtype,
        "path": os.path.abspath(args.output),
        "n_params": n_params,
        "expected_params": expected,
        "heads": list(model.heads),
        "atomic_numbers": [int(z) for z in model.atomic_numbers],
        "r_max": float(model.r_max),
        "avg_num_neighbors": float(model.interactions[0].avg_num_neighbors),
        "build_s": round(time.perf_counter() - t0, 3),
        "versions": {
            "torch": torch.__version__,
            "mace": __import__("mace").__version__,
            "e3nn": __import__("e3nn").__version__,
        },
    }
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
