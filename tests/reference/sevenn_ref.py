"""sevenn (torch) reference runs for the SevenNet parity tests and benchmark.

Runs INSIDE the sevenn reference venv (``tests/reference/make_venvs.sh sevenn``)::

    # energy/forces/stress of every frame of IN with a checkpoint (path or sevenn name)
    .venvs/sevenn/bin/python tests/reference/sevenn_ref.py predict CKPT IN OUT.npz \
        [--dtype float32|float64] [--repeats N]

    # a checkpoint with random weights, saved like sevenn saves checkpoints
    .venvs/sevenn/bin/python tests/reference/sevenn_ref.py random OUT.pth \
        --base 7net-0 | --preset small-parity|small-noparity  [--seed 0]

    # the path of sevenn's packaged SevenNet-0 checkpoint
    .venvs/sevenn/bin/python tests/reference/sevenn_ref.py path [NAME]

``predict``: float32 goes through sevenn's own ``SevenNetCalculator`` (what users run).
float64 builds the same model from the checkpoint, casts it with ``model.double()`` and
feeds the calculator's graph (``unlabeled_atoms_to_graph``) in float64.
OUT.npz keys per frame ``i`` (``f0000``...): ``energy`` () eV, ``forces`` (n, 3) eV/Å,
``stress`` (6,) eV/Å^3 ASE sign/Voigt order (xx yy zz yz xz xy), ``energies`` (n,) eV,
``num_edges`` (), with --repeats also ``time_s`` (median seconds of one full
``calc.calculate``: graph + energy + forces + stress, warm-up excluded) and
``time_first_s``; top-level ``n_frames`` and ``meta`` (JSON: versions, dtype, threads).

``random``: every float parameter of the model state dict (not the Wigner-3j buffers,
masks or the conv denominator) becomes ``w + N(0, 0.1 |w|_rms + 0.05)`` from ``--seed``.
``--base 7net-0`` perturbs SevenNet-0 (sevenn 0.9.1 layout: exercises the old-checkpoint
path).  The presets build fresh small models with sevenn's current model builder
(current layout), with parity or without, polynomial or XPLOR cutoff, inferred irreps.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np


def _calculator(ckpt: str, dtype: str):
    import torch
    from sevenn.calculator import SevenNetCalculator
    import sevenn.util as util

    if dtype == "float32":
        return SevenNetCalculator(model=ckpt, device="cpu")
    cp = util.load_checkpoint(ckpt)
    model = cp.build_model()  # (sevenn's compat patches need the float32 default here)
    torch.set_default_dtype(torch.float64)  # one-hot embeddings are made in the default dtype
    model.set_is_batch_data(False)
    model = model.double()
    from sevenn.nn.node_embedding import OnehotEmbedding

    def to_double(module, inputs, data):  # OnehotEmbedding hard-codes .float()
        for key in (module.key_output, module.key_additional_output):
            if key is not None and torch.is_floating_point(data[key]):
                data[key] = data[key].double()
        return data

    for module in model.modules():
        if isinstance(module, OnehotEmbedding):
            module.register_forward_hook(to_double)
    calc = SevenNetCalculator(model=model, file_type="model_instance", device="cpu")

    def calculate(atoms=None, properties=None, system_changes=None):
        from ase.calculators.calculator import Calculator, all_changes
        from sevenn.atom_graph_data import AtomGraphData
        from sevenn.train.dataload import unlabeled_atoms_to_graph

        Calculator.calculate(calc, atoms, properties, system_changes or all_changes)
        graph = unlabeled_atoms_to_graph(atoms, calc.cutoff, with_shift=False)
        for k, v in list(graph.items()):
            if k == "info":
                continue
            graph[k] = util.dtype_correct(v, float_dtype=torch.float64)
        data = AtomGraphData(**graph)
        output = calc.model(data)
        calc.results = calc.output_to_results(output)

    calc.calculate = calculate
    return calc


def cmd_predict(a) -> None:
    import ase.io
    import torch

    torch.set_num_threads(a.threads) if a.threads else None
    frames = ase.io.read(a.input, index=":")
    calc = _calculator(a.checkpoint, a.dtype)
    out = {"n_frames": np.array(len(frames))}
    for i, atoms in enumerate(frames):
        atoms = atoms.copy()
        atoms.calc = calc
        e = atoms.get_potential_energy()
        f = atoms.get_forces()
        key = f"f{i:04d}"
        out[f"{key}.energy"] = np.array(e, dtype=np.float64)
        out[f"{key}.forces"] = np.asarray(f, dtype=np.float64)
        out[f"{key}.energies"] = np.asarray(calc.results["energies"], dtype=np.float64)
        out[f"{key}.num_edges"] = np.array(calc.results["num_edges"])
        if np.all(atoms.pbc):
            out[f"{key}.stress"] = np.asarray(atoms.get_stress(), dtype=np.float64)
    if a.repeats:  # per frame: median wall time of a full calculate (graph + E + F + S), warm-up excluded
        for i, frame in enumerate(frames):
            times = []
            for _ in range(a.repeats + 1):
                atoms = frame.copy()
                calc.reset()  # no cached results
                atoms.calc = calc
                t0 = time.perf_counter()
                atoms.get_potential_energy()
                atoms.get_forces()
                times.append(time.perf_counter() - t0)
            out[f"f{i:04d}.time_s"] = np.array(statistics.median(times[1:]))
            out[f"f{i:04d}.time_first_s"] = np.array(times[0])
    import e3nn
    import sevenn

    out["meta"] = np.array(json.dumps({
        "dtype": a.dtype, "torch": torch.__version__, "e3nn": e3nn.__version__,
        "sevenn": sevenn.__version__, "threads": torch.get_num_threads(),
    }))
    np.savez(a.output, **out)


PRESETS = {
    # O(3) model, inferred irreps (channel 16, lmax 2), polynomial cutoff
    "small-parity": {
        "cutoff": 4.0, "channel": 16, "lmax": 2, "is_parity": True, "num_convolution_layer": 3,
        "irreps_manual": False,
        "radial_basis": {"radial_basis_name": "bessel", "bessel_basis_num": 6},
        "cutoff_function": {"cutoff_function_name": "poly_cut", "poly_cut_p_value": 5},
        "weight_nn_hidden_neurons": [16, 16], "self_connection_type": "linear",
        "act_radial": "silu", "act_scalar": {"e": "silu", "o": "tanh"},
        "act_gate": {"e": "silu", "o": "tanh"},
    },
    # SO(3) like SevenNet-0 but small, manual irreps, XPLOR, lmax 3 filter
    "small-noparity": {
        "cutoff": 4.5, "channel": 16, "lmax": 3, "is_parity": False, "num_convolution_layer": 3,
        "irreps_manual": ["16x0e", "16x0e+8x1e+4x2e+4x3e", "16x0e+8x1e+4x2e", "16x0e"],
        "radial_basis": {"radial_basis_name": "bessel", "bessel_basis_num": 8},
        "cutoff_function": {"cutoff_function_name": "XPLOR", "cutoff_on": 3.5},
        "weight_nn_hidden_neurons": [32], "self_connection_type": "linear",
        "act_radial": "silu", "act_scalar": {"e": "silu", "o": "tanh"},
        "act_gate": {"e": "silu", "o": "tanh"},
    },
}

PRESET_ELEMENTS = ["H", "Li", "C", "N", "O", "Na", "Si", "Cl", "Co", "Cu"]


def _perturb(sd, seed):
    import torch

    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in sd.items():
        skip = ("_w3j" in k) or k.endswith("output_mask") or k.endswith("denominator")
        if skip or not torch.is_floating_point(v) or v.numel() == 0:
            out[k] = v.clone()
            continue
        rms = float(v.double().pow(2).mean().sqrt())
        noise = torch.randn(v.shape, generator=g, dtype=torch.float64) * (0.1 * rms + 0.05)
        out[k] = (v.double() + noise).to(v.dtype)
    return out


def cmd_random(a) -> None:
    import torch

    torch.manual_seed(a.seed)
    if a.base:
        import sevenn.util as util

        path = util.pretrained_name_to_path(a.base) if not a.base.endswith(".pth") else a.base
        cp = torch.load(path, map_location="cpu", weights_only=False)
        ckpt = {"config": cp["config"], "model_state_dict": _perturb(cp["model_state_dict"], a.seed)}
    else:
        import sevenn
        import sevenn._const as const
        from ase.data import atomic_numbers
        from sevenn.model_build import build_E3_equivariant_model

        rng = np.random.default_rng(a.seed)
        cfg = dict(const.DEFAULT_E3_EQUIVARIANT_MODEL_CONFIG)
        cfg.update(PRESETS[a.preset])
        species = sorted(PRESET_ELEMENTS)
        zs = [atomic_numbers[s] for s in species]
        cfg.update({
            "chemical_species": species,
            "_number_of_species": len(species),
            "_type_map": {z: i for i, z in enumerate(zs)},
            "shift": [float(x) for x in rng.normal(-4.0, 2.0, len(species))],
            "scale": [float(x) for x in rng.uniform(0.8, 2.0, len(species))],
            "conv_denominator": [float(x) for x in rng.uniform(10.0, 40.0, cfg["num_convolution_layer"])],
            "train_denominator": False,
            "train_shift_scale": False,
            "version": sevenn.__version__,
        })
        model = build_E3_equivariant_model(cfg)
        sd = _perturb(model.state_dict(), a.seed)
        ckpt = {"config": cfg, "model_state_dict": sd}
    torch.save(ckpt, a.output)
    print(a.output)


def cmd_path(a) -> None:
    import sevenn.util as util

    print(util.pretrained_name_to_path(a.name))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("predict")
    p.add_argument("checkpoint")
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--repeats", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    p.set_defaults(fn=cmd_predict)
    p = sub.add_parser("random")
    p.add_argument("output")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--base")
    g.add_argument("--preset", choices=sorted(PRESETS))
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=cmd_random)
    p = sub.add_parser("path")
    p.add_argument("name", nargs="?", default="7net-0")
    p.set_defaults(fn=cmd_path)
    a = ap.parse_args(argv)
    a.fn(a)


if __name__ == "__main__":
    sys.exit(main())
