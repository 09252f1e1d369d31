"""Tests of jaxuft.checkpoints.torch_pickle on hand-made torch-like zip files.

torch is never imported: checkpoints are produced with a small pure-Python
pickler (``TorchLikePickler``) that writes the same opcodes torch.save does
(persistent-id storages, ``torch._utils._rebuild_tensor_v2``, ...).
"""

import io
import os
import pickle
import subprocess
import sys
import zipfile
from collections import OrderedDict

import numpy as np
import pytest

from jaxuft.checkpoints.torch_pickle import (
    PickledClass,
    PickledFunction,
    PickledObject,
    TorchDtype,
    checkpoint_globals,
    read_checkpoint,
)
from jaxuft.errors import CheckpointError, UnsafeCheckpointError

# --------------------------------------------------------------------------
# a torch.save look-alike
# --------------------------------------------------------------------------


class Ref:
    """A global by name (module, name), written as a GLOBAL opcode."""

    def __init__(self, module, name):
        self.module, self.name = module, name


class Storage:
    def __init__(self, data: np.ndarray, storage_class="FloatStorage", key=None):
        self.data, self.storage_class, self.key = data, storage_class, key


class Tensor:
    """Pickles like a torch tensor: _rebuild_tensor_v2(storage, offset, size, stride, ...)."""

    def __init__(self, storage, offset, size, stride, parameter=False):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride
        self.parameter = parameter

    def __reduce__(self):
        t = (Ref("torch._utils", "_rebuild_tensor_v2"),
             (self.storage, self.offset, tuple(self.size), tuple(self.stride), False,
              OrderedDict()))
        if self.parameter:
            return Ref("torch._utils", "_rebuild_parameter"), (Raw(t), True, OrderedDict())
        return t


class Call:
    """Pickles as a call ``ref(*args)`` followed by an optional BUILD state."""

    def __init__(self, ref, args=(), state=None):
        self.ref, self.args, self.state = ref, args, state

    def __reduce__(self):
        return (self.ref, self.args) if self.state is None else (self.ref, self.args, self.state)


class Raw:
    """A function result embedded in a reduce tuple (for nested calls)."""

    def __init__(self, reduce):
        self.reduce = reduce

    def __reduce__(self):
        return self.reduce


class TorchLikePickler(pickle._Pickler):
    def __init__(self, f, storages, protocol=2):
        super().__init__(f, protocol=protocol)
        self.storages = storages

    def save(self, obj, save_persistent_id=True):
        if isinstance(obj, Ref):
            self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
            return
        if isinstance(obj, (Tensor, Call, Raw)):  # never memoize: allow repeats
            func, args, *rest = obj.__reduce__()
            self.save(func)
            self.save(args)
            self.write(pickle.REDUCE)
            if rest and rest[0] is not None:
                self.save(rest[0])
                self.write(pickle.BUILD)
            return
        super().save(obj, save_persistent_id)

    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            key = obj.key if obj.key is not None else str(len(self.storages))
            self.storages.setdefault(key, obj.data)
            return ("storage", Ref("torch", obj.storage_class), key, "cpu", obj.data.size)
        return None


def write_checkpoint(path, obj, *, prefix="archive", extra=None, drop=(), protocol=2,
                     byteorder="little"):
    storages: dict = {}
    buf = io.BytesIO()
    TorchLikePickler(buf, storages, protocol).dump(obj)
    records = {"data.pkl": buf.getvalue(), "byteorder": byteorder.encode(), "version": b"3\n"}
    for key, data in storages.items():
        arr = np.asarray(data)
        if byteorder == "big":
            arr = arr.astype(arr.dtype.newbyteorder(">"))
        records[f"data/{key}"] = arr.tobytes()
    records.update(extra or {})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for name, data in records.items():
            if name not in drop:
                zf.writestr(f"{prefix}/{name}" if prefix else name, data)
    return path


def module_state(params=(), buffers=(), modules=(), **attrs):
    return {"training": False, "_parameters": OrderedDict(params),
            "_buffers": OrderedDict(buffers), "_non_persistent_buffers_set": set(),
            "_modules": OrderedDict(modules), **attrs}


def module(qualname, state):
    module_name, _, name = qualname.rpartition(".")
    return Call(Ref("copyreg", "_reconstructor"),
                (Ref(module_name, name), Ref("builtins", "object"), None), state)


# --------------------------------------------------------------------------
# valid files
# --------------------------------------------------------------------------


def test_round_trip_strides_offsets_and_sharing(tmp_path):
    base = np.arange(60, dtype=np.float32)
    st = Storage(base)
    obj = OrderedDict([
        ("contiguous", Tensor(st, 0, (3, 4), (4, 1))),
        ("transposed", Tensor(st, 0, (4, 3), (1, 4))),
        ("offset_strided", Tensor(st, 7, (2, 3), (20, 3))),
        ("scalar", Tensor(st, 59, (), ())),
        ("expanded", Tensor(st, 5, (3, 2), (0, 1))),
        ("empty", Tensor(st, 0, (0, 5), (5, 1))),
    ])
    out = read_checkpoint(write_checkpoint(tmp_path / "m.pt", obj))
    assert isinstance(out, OrderedDict) and list(out) == list(obj)
    view = np.lib.stride_tricks.as_strided
    expect = {
        "contiguous": base[:12].reshape(3, 4),
        "transposed": base[:12].reshape(3, 4).T,
        "offset_strided": view(base[7:], (2, 3), (80, 12)),
        "scalar": np.array(59.0, np.float32),
        "expanded": view(base[5:], (3, 2), (0, 4)),
        "empty": np.zeros((0, 5), np.float32),
    }
    for k, v in expect.items():
        assert out[k].dtype == np.float32 and out[k].shape == v.shape, k
        np.testing.assert_array_equal(out[k], v)
        assert out[k].flags.c_contiguous and out[k].flags.writeable
    out["contiguous"][0, 0] = 100  # copies, not views of one buffer
    assert out["transposed"][0, 0] == 0


@pytest.mark.parametrize("storage_class,np_dtype", [
    ("DoubleStorage", np.float64), ("FloatStorage", np.float32), ("HalfStorage", np.float16),
    ("LongStorage", np.int64), ("IntStorage", np.int32), ("ShortStorage", np.int16),
    ("CharStorage", np.int8), ("ByteStorage", np.uint8), ("BoolStorage", np.bool_),
    ("ComplexFloatStorage", np.complex64), ("ComplexDoubleStorage", np.complex128),
])
@pytest.mark.parametrize("byteorder", ["little", "big"])
def test_dtypes(tmp_path, storage_class, np_dtype, byteorder):
    data = (np.arange(6) % 2 if np_dtype is np.bool_ else np.arange(6) - 2).astype(np_dtype)
    obj = {"t": Tensor(Storage(data, storage_class), 1, (2, 2), (1, 2))}
    out = read_checkpoint(write_checkpoint(tmp_path / "m.pt", obj, byteorder=byteorder))["t"]
    assert out.dtype == np.dtype(np_dtype) and out.dtype.isnative
    np.testing.assert_array_equal(out, data[1:5].reshape(2, 2).T)


def test_bfloat16_widened_to_float32(tmp_path):
    f32 = np.array([1.0, -2.5, 3.140625, 1e30], np.float32)
    bf16_bits = (f32.view(np.uint32) >> 16).astype(np.uint16)
    obj = [Tensor(Storage(bf16_bits, "BFloat16Storage"), 0, (4,), (1,))]
    with pytest.warns(UserWarning, match="bfloat16"):
        out = read_checkpoint(write_checkpoint(tmp_path / "m.pt", obj))[0]
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, (bf16_bits.astype(np.uint32) << 16).view(np.float32))


def test_rebuild_tensor_v3_untyped_storage(tmp_path):
    data = np.arange(4, dtype=np.uint16)
    t = Raw((Ref("torch._utils", "_rebuild_tensor_v3"),
             (Storage(data.view(np.uint8), "UntypedStorage"), 1, (3,), (1,), False,
              OrderedDict(), Ref("torch", "uint16"))))
    # "UntypedStorage" lives in torch.storage in real files
    out = read_checkpoint(write_checkpoint(tmp_path / "m.pt", [t]))
    np.testing.assert_array_equal(out[0], [1, 2, 3])
    assert out[0].dtype == np.uint16


def test_module_tree_state_dict_and_helpers(tmp_path):
    st = Storage(np.arange(20, dtype=np.float64), "DoubleStorage")
    lin_w = Tensor(st, 0, (2, 3), (3, 1), parameter=True)
    lin_b = Tensor(st, 6, (2,), (1,), parameter=True)
    scale = Tensor(st, 8, (), ())
    hidden = Tensor(st, 9, (2,), (1,))
    irreps = Call(Ref("e3nn.o3._irreps", "Irreps"),
                  ((Call(Ref("e3nn.o3._irreps", "_MulIr"),
                         (8, Call(Ref("e3nn.o3._irreps", "Irrep"), (1, -1)))),),))
    linear = module("torch.nn.modules.linear.Linear",
                    module_state([("weight", lin_w), ("bias", lin_b)], in_features=3))
    inter = module("mace.modules.blocks.RealAgnosticResidualInteractionBlock",
                   module_state(modules=[("linear", linear)], irreps_in=irreps,
                                act=Ref("torch.nn.functional", "silu"), gate=Ref("torch", "tanh")))
    mlist = module("torch.nn.modules.container.ModuleList",
                   module_state(modules=[("0", inter), ("1", None)]))
    top_state = module_state(buffers=[("scale", scale), ("hidden", hidden)],
                             modules=[("interactions", mlist)], r_max=5.0,
                             dtype=Ref("torch", "float64"))
    top_state["_non_persistent_buffers_set"] = {"hidden"}
    model = module("mace.modules.models.ScaleShiftMACE", top_state)
    out = read_checkpoint(write_checkpoint(tmp_path / "m.model", model))

    assert isinstance(out, PickledObject) and out.is_module
    assert out.qualname == "mace.modules.models.ScaleShiftMACE"
    assert out.r_max == 5.0 and out.dtype == TorchDtype("float64", "<f8", None)
    assert list(out.state_dict()) == ["scale", "interactions.0.linear.weight",
                                      "interactions.0.linear.bias"]
    np.testing.assert_array_equal(out.state_dict()["interactions.0.linear.bias"], [6.0, 7.0])
    assert [n for n, _ in out.named_modules()] == [
        "", "interactions", "interactions.0", "interactions.0.linear"]
    assert [n for n, _ in out.named_parameters()] == [
        "interactions.0.linear.weight", "interactions.0.linear.bias"]
    assert [n for n, _ in out.named_buffers()] == ["scale", "hidden"]
    block = out.interactions[0]  # attribute fall-through + ModuleList indexing
    assert block.qualname == "mace.modules.blocks.RealAgnosticResidualInteractionBlock"
    assert len(out.interactions) == 2 and list(out.children()) == [out.interactions]
    assert block.linear.weight.shape == (2, 3) and block.linear.in_features == 3
    assert block.act == PickledFunction("torch.nn.functional.silu")
    assert block.gate == PickledFunction("torch.tanh")
    (mulir,) = block.irreps_in  # tuple subclasses keep their items
    mul, ir = mulir
    assert mulir.qualname == "e3nn.o3._irreps._MulIr" and mul == 8
    assert ir.qualname == "e3nn.o3._irreps.Irrep" and tuple(ir) == (1, -1)
    assert isinstance(type(out), PickledClass)
    with pytest.raises(AttributeError):
        out.no_such_attribute
    with pytest.raises(TypeError, match="not a torch.nn.Module"):
        ir.state_dict()


def test_newobj_list_dict_subclasses_and_plain_data(tmp_path):
    # protocol-2 NEWOBJ + BUILD + APPENDS + SETITEMS (a list/dict subclass), by hand
    buf = io.BytesIO()
    p = TorchLikePickler(buf, {})
    p.write(pickle.PROTO + bytes([2]))
    p.save(Ref("sevenn.model", "Thing"))
    p.save((1, 2))
    p.write(pickle.NEWOBJ)
    p.write(pickle.EMPTY_DICT + pickle.MARK)
    p.save("a")
    p.save(1)
    p.write(pickle.SETITEMS + pickle.BUILD)
    p.write(pickle.MARK)
    p.save(5)
    p.save(6)
    p.write(pickle.APPENDS + pickle.MARK)
    p.save("k")
    p.save("v")
    p.write(pickle.SETITEMS + pickle.STOP)
    path = tmp_path / "m.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", buf.getvalue())
    out = read_checkpoint(path)
    assert out.qualname == "sevenn.model.Thing" and out.args == (1, 2)
    assert out.a == 1 and out.state == {"a": 1}
    assert out.listitems == [5, 6] and out.items == (5, 6) and out.dictitems == {"k": "v"}

    data = {"set": {1, 2}, "frozen": frozenset([3]), "bytes": b"\x00\xffabc", "empty": b"",
            "complex": 1 + 2j, "slice": slice(1, 5, 2), "nested": [(1, 2.5, None, True)],
            "barr": bytearray(b"xy")}
    out = read_checkpoint(write_checkpoint(tmp_path / "d.pt", data))
    assert out == data


def test_numpy_objects_inside_pickle(tmp_path):
    arr = np.arange(6, dtype=">i4").reshape(2, 3)
    data = {"arr": arr, "f": np.float64(2.5), "i": np.int32(-3), "s": np.array(["ab", "c"])}
    path = tmp_path / "n.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps(data, protocol=2))
    out = read_checkpoint(path)
    np.testing.assert_array_equal(out["arr"], arr)
    assert isinstance(out["arr"], np.ndarray) and out["arr"].dtype.newbyteorder("=") == np.int32
    assert out["f"] == 2.5 and out["f"].dtype == np.float64 and out["i"] == -3
    np.testing.assert_array_equal(out["s"], data["s"])

    obj_arr = np.array([1, "x"], dtype=object)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps(obj_arr, protocol=2))
    with pytest.raises(CheckpointError, match="numpy dtype"):
        read_checkpoint(path)


def test_sevenn_like_dict_checkpoint(tmp_path):
    st = Storage(np.arange(10, dtype=np.float32))
    obj = {"model_state_dict": OrderedDict([("w", Tensor(st, 0, (2, 5), (5, 1)))]),
           "config": {"cutoff": 5.0, "act": Ref("torch.nn.functional", "silu"),
                      "dtype": Ref("torch", "float32"), "chemical_species": ["H", "O"],
                      "device": Call(Ref("torch", "device"), ("cpu",)),
                      "shape": Call(Ref("torch", "Size"), ([2, 5],))}}
    out = read_checkpoint(write_checkpoint(tmp_path / "s.pth", obj))
    assert out["model_state_dict"]["w"].shape == (2, 5)
    cfg = out["config"]
    assert cfg["device"] == "cpu" and cfg["shape"] == (2, 5) and cfg["cutoff"] == 5.0
    assert cfg["dtype"].name == "float32" and cfg["act"].qualname == "torch.nn.functional.silu"


def test_allow_prefixes_and_checkpoint_globals(tmp_path):
    obj = Call(Ref("nequip.nn", "GraphModel"), (1,))
    path = write_checkpoint(tmp_path / "m.pt", obj)
    with pytest.raises(UnsafeCheckpointError, match="nequip.nn.GraphModel"):
        read_checkpoint(path)
    assert read_checkpoint(path, allow_prefixes=["nequip"]).qualname == "nequip.nn.GraphModel"
    assert checkpoint_globals(path) == ["nequip.nn.GraphModel"]


# --------------------------------------------------------------------------
# malicious files: refused, and nothing runs
# --------------------------------------------------------------------------


class OsSystem:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def _assert_refused(path, *names, sentinel=None):
    with pytest.raises(UnsafeCheckpointError) as exc:
        read_checkpoint(path)
    msg = str(exc.value)
    for name in names:
        assert name in msg
    assert "Nothing was executed" in msg and "state_dict" in msg
    if sentinel is not None:
        assert not sentinel.exists()
    return msg


def test_os_system_refused_and_payload_is_live(tmp_path):
    sentinel = tmp_path / "SENTINEL"
    payload = {"weights": OsSystem(f"touch {sentinel}")}
    path = write_checkpoint(tmp_path / "evil.pt", payload)
    _assert_refused(path, "posix.system", sentinel=sentinel)
    # the payload is real: a plain pickle.load would have run it
    pkl = zipfile.ZipFile(path).read("archive/data.pkl")
    loader = "import pickle, sys; pickle.loads(sys.stdin.buffer.read())"
    subprocess.run([sys.executable, "-c", loader], input=pkl, check=True)
    assert sentinel.exists()


@pytest.mark.parametrize("ref,args", [
    (Ref("os", "system"), ("touch {s}",)),
    (Ref("posix", "system"), ("touch {s}",)),
    (Ref("nt", "system"), ("touch {s}",)),
    (Ref("builtins", "eval"), ("open({s!r}, 'w')",)),
    (Ref("__builtin__", "eval"), ("open({s!r}, 'w')",)),  # python-2 spelling
    (Ref("builtins", "exec"), ("open({s!r}, 'w')",)),
    (Ref("subprocess", "Popen"), (["touch", "{s}"],)),
    (Ref("webbrowser", "open"), ("file://{s}",)),
    (Ref("torch.jit", "load"), ("{s}",)),
    (Ref("torch._C", "_jit_pass"), ("{s}",)),
    (Ref("__torch__.evil", "Evil"), ("{s}",)),
    (Ref("torch.fx.graph_module", "_forward_from_src"), ("{s}",)),
    (Ref("torch.serialization", "load"), ("{s}",)),
    (Ref("numpy", "load"), ("{s}",)),
    (Ref("functools", "reduce"), ("{s}",)),
    (Ref("torch", "load"), ("{s}",)),
])
def test_dangerous_globals_refused(tmp_path, ref, args):
    sentinel = tmp_path / "SENTINEL"
    args = tuple([a.format(s=str(sentinel)) for a in x] if isinstance(x, list)
                 else x.format(s=str(sentinel)) for x in args)
    path = write_checkpoint(tmp_path / "evil.pt", [Call(ref, args)])
    msg = _assert_refused(path, f"{ref.module.replace('__builtin__', 'builtins')}.{ref.name}",
                          sentinel=sentinel)
    if ref.module.startswith(("torch.jit", "__torch__")):
        assert "TorchScript" in msg


def test_getattr_import_chain_refused(tmp_path):
    # getattr(__import__('os'), 'system')('touch ...')
    sentinel = tmp_path / "SENTINEL"
    imp = Raw((Ref("builtins", "__import__"), ("os",)))
    system = Raw((Ref("builtins", "getattr"), (imp, "system")))
    path = write_checkpoint(tmp_path / "evil.pt", Raw((system, (f"touch {sentinel}",))))
    _assert_refused(path, "builtins.__import__", sentinel=sentinel)


@pytest.mark.parametrize("target,name", [
    (Ref("builtins", "object"), "__subclasses__"),
    (Ref("collections", "OrderedDict"), "fromkeys"),
    (Ref("torch._C", "_VariableFunctionsClass"), "load"),
    (Ref("mace.modules", "Thing"), "__init__"),
])
def test_getattr_only_for_torch_builtin_functions(tmp_path, target, name):
    path = write_checkpoint(tmp_path / "evil.pt",
                            [Raw((Ref("builtins", "getattr"), (target, name)))])
    _assert_refused(path, "builtins.getattr(", repr(name))
    # the one form torch itself writes (torch.tanh):
    ok = Raw((Ref("__builtin__", "getattr"), (Ref("torch._C", "_VariableFunctionsClass"), "tanh")))
    gelu = Ref("torch._C._nn", "gelu")
    out = read_checkpoint(write_checkpoint(tmp_path / "ok.pt", [ok, gelu]))
    assert out == [PickledFunction("torch.tanh"), PickledFunction("torch.nn.functional.gelu")]


def test_evil_global_hidden_after_valid_tensors(tmp_path):
    st = Storage(np.zeros(4, np.float32))
    obj = {"w": Tensor(st, 0, (4,), (1,)),
           "model": module("mace.modules.models.MACE",
                           module_state(extra=Call(Ref("os", "system"), ("true",))))}
    _assert_refused(write_checkpoint(tmp_path / "evil.pt", obj), "os.system")


def test_fx_graph_module_source_is_kept_as_text(tmp_path):
    # torch.load would exec body["_code"]; we must not
    sentinel = tmp_path / "SENTINEL"
    code = f"\nimport os\nos.system('touch {sentinel}')\ndef forward(self, x):\n    return x\n"
    body = module_state(_code=code, _tracer_cls=Ref("torch.fx._symbolic_trace", "Tracer"))
    gm = Raw((Ref("torch.fx.graph_module", "reduce_graph_module"), (body, "import torch\n")))
    holder = module("torch.nn.modules.container.ModuleList", module_state(modules=[("0", gm)]))
    out = read_checkpoint(write_checkpoint(tmp_path / "m.pt", holder))
    assert out[0].qualname == "torch.fx.graph_module.GraphModule" and out[0]._code == code
    assert [n for n, _ in out.named_modules()] == ["", "0"]
    assert not sentinel.exists()


def test_placeholder_function_cannot_be_called(tmp_path):
    obj = Call(Ref("torch.nn.functional", "silu"), (1.0,))
    with pytest.raises(UnsafeCheckpointError, match="calls torch.nn.functional.silu"):
        read_checkpoint(write_checkpoint(tmp_path / "m.pt", obj))


def test_build_cannot_mutate_shared_stand_ins(tmp_path):
    # BUILD with slot state on the shared torch.float32 marker must fail, not stick
    buf = io.BytesIO()
    p = TorchLikePickler(buf, {})
    p.write(pickle.PROTO + bytes([2]))
    p.save(Ref("torch", "float32"))
    p.save((None, {"numpy": "object"}))
    p.write(pickle.BUILD + pickle.STOP)
    path = tmp_path / "m.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", buf.getvalue())
    with pytest.raises(CheckpointError):
        read_checkpoint(path)
    # unchanged table: a float32 tensor still reads as float32
    out = read_checkpoint(write_checkpoint(
        tmp_path / "ok.pt", [Tensor(Storage(np.ones(2, np.float32)), 0, (2,), (1,))]))
    assert out[0].dtype == np.float32


# --------------------------------------------------------------------------
# broken files
# --------------------------------------------------------------------------


def _valid(tmp_path, name="m.pt", **kw):
    st = Storage(np.arange(1000, dtype=np.float64), "DoubleStorage")
    return write_checkpoint(tmp_path / name, {"w": Tensor(st, 0, (10, 100), (100, 1))}, **kw)


def test_missing_and_not_a_file(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        read_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="not a file"):
        read_checkpoint(tmp_path)


def test_not_a_zip(tmp_path):
    p = tmp_path / "x.pt"
    p.write_text("hello")
    with pytest.raises(CheckpointError, match="not a zip archive"):
        read_checkpoint(p)
    p.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        read_checkpoint(p)


def test_legacy_torch_format(tmp_path):
    p = tmp_path / "legacy.pt"
    p.write_bytes(pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2) + b"more")
    with pytest.raises(CheckpointError, match="legacy"):
        read_checkpoint(p)


def test_torchscript_archive(tmp_path):
    p = _valid(tmp_path, extra={"constants.pkl": b"\x80\x02).", "code/__torch__/m.py": b"x"})
    with pytest.raises(CheckpointError, match="TorchScript"):
        read_checkpoint(p)


def test_truncated_zip(tmp_path):
    p = _valid(tmp_path)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        read_checkpoint(p)


def test_crc_error(tmp_path):
    p = _valid(tmp_path)
    data = bytearray(p.read_bytes())
    i = data.index(np.arange(1000, dtype=np.float64).tobytes()[800:816])
    data[i] ^= 0xFF  # flip a byte inside the tensor data
    p.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt"):
        read_checkpoint(p)


def test_zip_without_data_pkl(tmp_path):
    p = _valid(tmp_path, drop=("data.pkl",))
    with pytest.raises(CheckpointError, match="no data.pkl"):
        read_checkpoint(p)


def test_missing_storage_record(tmp_path):
    p = _valid(tmp_path, drop=("data/0",))
    with pytest.raises(CheckpointError, match="data/0 .*missing"):
        read_checkpoint(p)


def test_storage_shorter_than_declared(tmp_path):
    p = _valid(tmp_path, extra={"data/0": np.zeros(10).tobytes()})
    with pytest.raises(CheckpointError, match="declares 1000 elements"):
        read_checkpoint(p)


@pytest.mark.parametrize("offset,size,stride", [
    (0, (10, 101), (100, 1)),  # one element too many
    (1, (10, 100), (100, 1)),  # offset pushes past the end
    (0, (2, 2), (1000, 1)),  # stride jumps past the end
])
def test_tensor_larger_than_storage(tmp_path, offset, size, stride):
    st = Storage(np.arange(1000, dtype=np.float64), "DoubleStorage")
    p = write_checkpoint(tmp_path / "m.pt", [Tensor(st, offset, size, stride)])
    with pytest.raises(CheckpointError, match="holds only 1000"):
        read_checkpoint(p)


def test_malformed_tensor_arguments(tmp_path):
    st = Storage(np.arange(10, dtype=np.float32))
    for bad in [Tensor(st, -1, (2,), (1,)), Tensor(st, 0, (2,), (-1,)),
                Tensor(st, 0, (2, 2), (1,)), Tensor(st, 0, ("a",), (1,))]:
        with pytest.raises(CheckpointError, match="malformed tensor"):
            read_checkpoint(write_checkpoint(tmp_path / "m.pt", [bad]))


def test_size_limits(tmp_path):
    p = _valid(tmp_path)
    with pytest.raises(CheckpointError, match="limit"):
        read_checkpoint(p, max_total_bytes=4000)
    with pytest.raises(CheckpointError, match="limit"):
        read_checkpoint(p, max_pickle_bytes=10)
    # a huge zero-stride view of a tiny storage is capped too
    st = Storage(np.zeros(1, np.float64), "DoubleStorage")
    p = write_checkpoint(tmp_path / "bomb.pt", [Tensor(st, 0, (1 << 20, 1 << 20), (0, 0))])
    with pytest.raises(CheckpointError, match="exceeds the limit"):
        read_checkpoint(p)


def test_corrupt_pickle(tmp_path):
    p = _valid(tmp_path, extra={"data.pkl": b"\x80\x02}q\x00(X"})
    with pytest.raises(CheckpointError, match="data.pkl is corrupt"):
        read_checkpoint(p)


def test_deep_nesting(tmp_path, monkeypatch):
    depth = 100_000  # the unpickler is iterative: deep data is fine
    p = _valid(tmp_path, extra={"data.pkl": b"\x80\x02" + b"]" * depth + b"a" * (depth - 1) + b"."})
    out, n = read_checkpoint(p), 0
    while out:
        out, n = out[0], n + 1
    assert n == depth - 1
    # module trees walked by the torch helpers are capped (cycles / absurd depth)
    from jaxuft.checkpoints import torch_pickle

    monkeypatch.setattr(torch_pickle, "MAX_MODULE_DEPTH", 20)
    m = module("torch.nn.modules.container.Sequential", module_state())
    for _ in range(30):
        m = module("torch.nn.modules.container.Sequential", module_state(modules=[("0", m)]))
    out = read_checkpoint(write_checkpoint(tmp_path / "deep.pt", m))
    with pytest.raises(CheckpointError, match="nested deeper"):
        out.state_dict()
    with pytest.raises(CheckpointError, match="nested deeper"):
        list(out.named_modules())


def test_protocol_0_and_4_pickles(tmp_path):
    st = Storage(np.arange(6, dtype=np.float32))
    for protocol in (1, 3, 4, 5):  # (torch writes 2; 0 cannot hold tuple persistent ids)
        obj = {"w": Tensor(st, 2, (2, 2), (1, 2)), "m": module("mace.modules.X", module_state(a=1))}
        path = write_checkpoint(tmp_path / f"p{protocol}.pt", obj, protocol=protocol)
        out = read_checkpoint(path)
        np.testing.assert_array_equal(out["w"], [[2, 4], [3, 5]])
        assert out["m"].a == 1 and out["m"].qualname == "mace.modules.X"


def test_bad_byteorder_record(tmp_path):
    p = _valid(tmp_path, extra={"byteorder": b"middle"})
    with pytest.raises(CheckpointError, match="byteorder"):
        read_checkpoint(p)
