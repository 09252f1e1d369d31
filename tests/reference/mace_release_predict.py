"""Energy, forces and stress of a mace ``.model`` with whatever mace release is first on ``sys.path``.

Runs inside the mace reference venv through ``mace_versions.py``.  Uses only the APIs every
0.3.x release has (``torch.load``, ``mace.data.config_from_atoms``,
``AtomicData.from_config``, ``torch_geometric`` batching, ``model(batch, compute_stress=True)``),
not ``MACECalculator`` (whose constructor changed between releases).  float64 throughout::

    python mace_release_predict.py MODEL FRAMES.traj OUT.npz
"""

from __future__ import annotations

import inspect
import json
import os
import sys

os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from ase.io import read  # noqa: E402

import mace  # noqa: E402
from mace import data  # noqa: E402
from mace.tools import torch_geometric, utils  # noqa: E402


def main(argv=None) -> int:
    model_path, frames_path, out_path = (argv or sys.argv[1:])[:3]
    torch.set_default_dtype(torch.float64)
    model = torch.load(model_path, weights_only=False, map_location="cpu").double().eval()
    z_table = utils.AtomicNumberTable([int(z) for z in model.atomic_numbers])
    r_max = float(model.r_max)
    from_config = data.AtomicData.from_config
    takes_heads = "heads" in inspect.signature(from_config).parameters
    out = {}
    frames = read(frames_path, index=":")
    for i, atoms in enumerate(frames):
        config = data.config_from_atoms(atoms)
        kw = {"heads": list(getattr(model, "heads", ["Default"]))} if takes_heads else {}
        item = from_config(config, z_table=z_table, cutoff=r_max, **kw)
        batch = next(iter(torch_geometric.dataloader.DataLoader([item], batch_size=1, shuffle=False)))
        res = model(batch.to_dict(), compute_stress=bool(atoms.pbc.all()), training=False)
        out[f"f{i:04d}.energy"] = np.array(float(res["energy"].detach().sum()))
        out[f"f{i:04d}.forces"] = res["forces"].detach().numpy()
        if atoms.pbc.all():
            out[f"f{i:04d}.stress_3x3"] = res["stress"].detach().numpy().reshape(3, 3)
    out["meta"] = np.array(json.dumps({"mace": getattr(mace, "__version__", "?"), "torch": torch.__version__,
                                       "n_frames": len(frames)}))
    np.savez(out_path, **out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
