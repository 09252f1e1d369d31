"""read_checkpoint on files written by real torch/mace-torch (in the reference venv).

torch runs only in a subprocess with the mace reference venv's python
(``tests/reference/make_venvs.sh mace``); the test is skipped without it.
That subprocess saves a SevenNet-like dict checkpoint covering many tensor
kinds and dumps torch's own view (``state_dict()``, module/parameter names)
of it and of freshly built MACE models to .npz/.json; we compare exactly.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jaxuft.checkpoints.torch_pickle import (
    PickledFunction,
    PickledObject,
    checkpoint_globals,
    read_checkpoint,
)
from jaxuft.errors import UnsafeCheckpointError

sys.path.insert(0, str(Path(__file__).resolve().parent / "reference"))
import mace_reference  # noqa: E402

# (preset, dtype): float64/float32, plain/Density interactions, multi-head
pytestmark = [pytest.mark.reference, pytest.mark.slow]

MODELS = [("tiny", "float64"), ("tiny-density", "float32"), ("multihead", "float64")]

TORCH_SCRIPT = r'''
import json, sys, warnings
from collections import OrderedDict
import numpy as np, torch
warnings.filterwarnings("ignore")
out_dir, models = sys.argv[1], sys.argv[2:]

def dump(sd, path):
    np.savez(path, keys=np.array(list(sd), dtype=str), **{
        f"a{i}": (v.float() if v.dtype == torch.bfloat16 else v).detach().numpy()
        for i, v in enumerate(sd.values())})

# -- SevenNet-like dict checkpoint
base = torch.arange(24, dtype=torch.float64).reshape(4, 6) / 7
sd = OrderedDict()
sd["f64"] = base
sd["f32_transposed"] = base.float().t()
sd["view_offset"] = base[1:, 2:5]
sd["f16"] = base.half()
sd["bf16"] = base.bfloat16()
for dt in ["int64", "int32", "int16", "int8", "uint8", "uint16", "uint32"]:
    sd[dt] = (torch.arange(-3, 3) % 100).to(getattr(torch, dt))
sd["bool"] = torch.tensor([True, False, True])
sd["c64"] = torch.complex(base.float(), -base.float())[::2]
sd["c128"] = torch.complex(base, base)
sd["scalar"] = torch.tensor(3.5)
sd["empty"] = torch.zeros(0, 3)
sd["expanded"] = torch.arange(3.0).expand(4, 3)
sd["param"] = torch.nn.Parameter(base[0])
t = torch.arange(4.0); t.note = "python attribute"
sd["with_attr"] = t
config = {"cutoff": 5.0, "act": torch.nn.functional.silu, "gate": torch.tanh,
          "dtype": torch.float32, "device": torch.device("cpu"), "species": ["H", "O"],
          "size": torch.Size([2, 3]), "tuple": (1, 2), "set": {1, 2}, "none": None,
          "np_array": np.arange(3.0), "np_scalar": np.float64(1.5), "bytes": b"\x00ab"}
torch.save({"model_state_dict": sd, "config": config}, f"{out_dir}/sevenn.pth")
dump(sd, f"{out_dir}/sevenn.pth.npz")

# -- MACE models: torch's own state_dict and module/parameter names
for i, path in enumerate(models):
    model = torch.load(path, map_location="cpu", weights_only=False)
    dump(model.state_dict(), f"{out_dir}/model{i}.npz")
    info = {
        "modules": [[n, type(m).__module__ + "." + type(m).__qualname__]
                    for n, m in model.named_modules()],
        "parameters": [n for n, _ in model.named_parameters()],
        "buffers": [n for n, _ in model.named_buffers()],
        "children": [n for n, _ in model.named_children()],
        "r_max": float(model.r_max), "heads": list(model.heads),
    }
    with open(f"{out_dir}/model{i}.json", "w") as f:
        json.dump(info, f)
'''


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    py = mace_reference.skip_without_mace()
    out = tmp_path_factory.mktemp("torch_ref")
    models = [mace_reference.build_model(p, seed=3, dtype=d) for p, d in MODELS]
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
    proc = subprocess.run([py, "-c", TORCH_SCRIPT, str(out), *map(str, models)],
                          capture_output=True, text=True, env=env, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out, models


def assert_state_dict_equal(ours, npz_path):
    ref = np.load(npz_path)
    keys = [str(k) for k in ref["keys"]]
    assert list(ours) == keys
    for i, k in enumerate(keys):
        a, b = ours[k], ref[f"a{i}"]
        assert isinstance(a, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape, k
        assert a.tobytes() == b.tobytes(), k  # bit-exact


@pytest.mark.parametrize("index", range(len(MODELS)), ids=[f"{p}-{d}" for p, d in MODELS])
def test_mace_model_matches_torch(ref, index):
    out, models = ref
    model = read_checkpoint(models[index])
    info = json.loads((out / f"model{index}.json").read_text())
    assert isinstance(model, PickledObject)
    assert model.qualname == "mace.modules.models.ScaleShiftMACE"
    assert_state_dict_equal(model.state_dict(), out / f"model{index}.npz")

    ours = [(n, m.qualname) for n, m in model.named_modules()]
    assert [n for n, _ in ours] == [n for n, _ in info["modules"]]
    for (name, q), (_, tq) in zip(ours, info["modules"]):
        if tq == "torch.jit._script.RecursiveScriptModule":  # e3nn's compiled submodules
            assert q.startswith("__torch__."), name
        elif q == "torch.fx.graph_module.GraphModule":  # torch makes a per-instance subclass
            assert tq.startswith(q), name
        else:
            assert q == tq, name
    assert [n for n, _ in model.named_parameters()] == info["parameters"]
    assert [n for n, _ in model.named_buffers()] == info["buffers"]
    assert [n for n, _ in model.named_children()] == info["children"]
    assert float(model.r_max) == info["r_max"] and list(model.heads) == info["heads"]
    block = model.interactions[1]
    assert "InteractionBlock" in block.qualname
    assert block.linear.weight is model.state_dict()["interactions.1.linear.weight"]
    assert block.conv_tp.qualname == "e3nn.o3._tensor_product._tensor_product.TensorProduct"
    irreps = block.irreps_out
    assert irreps.qualname == "e3nn.o3._irreps.Irreps" and len(irreps) >= 1
    mul, ir = irreps[0]
    assert isinstance(mul, int) and tuple(ir)[0] >= 0  # Irrep is (l, p)
    silus = [m.__dict__.get("f") for _, m in model.named_modules()
             if m.qualname == "e3nn.math._normalize_activation.normalize2mom"]
    assert PickledFunction("torch.nn.functional.silu") in silus


def test_mace_globals_all_known(ref):
    _, models = ref
    for path in models:
        names = checkpoint_globals(path)
        assert "mace.modules.models.ScaleShiftMACE" in names
        assert "torch.fx.graph_module.reduce_graph_module" in names  # exec'd by torch.load
        assert not any(n.startswith(("os.", "builtins.eval", "torch.jit._script")) for n in names)


def test_sevenn_like_dict_checkpoint(ref):
    out, _ = ref
    with pytest.warns(UserWarning, match="bfloat16"):
        ckpt = read_checkpoint(out / "sevenn.pth")
    assert set(ckpt) == {"model_state_dict", "config"}
    assert_state_dict_equal(ckpt["model_state_dict"], out / "sevenn.pth.npz")
    cfg = ckpt["config"]
    assert cfg["act"] == PickledFunction("torch.nn.functional.silu")
    assert cfg["gate"] == PickledFunction("torch.tanh")
    assert cfg["dtype"].name == "float32" and cfg["device"] == "cpu"
    assert cfg["size"] == (2, 3) and cfg["tuple"] == (1, 2) and cfg["set"] == {1, 2}
    assert cfg["species"] == ["H", "O"] and cfg["none"] is None and cfg["bytes"] == b"\x00ab"
    np.testing.assert_array_equal(cfg["np_array"], [0.0, 1.0, 2.0])
    assert cfg["np_scalar"] == 1.5 and cfg["cutoff"] == 5.0


def test_real_file_with_injected_payload_is_refused(ref, tmp_path):
    # A real torch.save file whose data.pkl is swapped for one calling os.system.
    import pickle
    import zipfile

    out, _ = ref
    sentinel = tmp_path / "SENTINEL"

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {sentinel}",)

    src = zipfile.ZipFile(out / "sevenn.pth")
    evil = tmp_path / "evil.pth"
    with zipfile.ZipFile(evil, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("/data.pkl"):
                data = pickle.dumps({"model_state_dict": Evil()}, protocol=2)
            dst.writestr(info, data)
    with pytest.raises(UnsafeCheckpointError, match="posix.system"):
        read_checkpoint(evil)
    assert not sentinel.exists()
