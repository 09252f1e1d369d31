"""Safe-reader limits (issue 11.5): hostile pickles are refused in seconds with an error naming the file.

The checkpoints are crafted here with the torch.save look-alike of test_torch_pickle (no torch).
"""

import io
import pickle
import time
import zipfile

import numpy as np
import pytest
from test_torch_pickle import Storage, Tensor, TorchLikePickler, module, module_state, write_checkpoint

from jaxuft.checkpoints.convert import convert_to_memory
from jaxuft.checkpoints.torch_pickle import read_checkpoint
from jaxuft.errors import CheckpointError


class Shared:
    """A module object pickled ONCE and referenced again by memo (BINGET): a DAG, as a pickle can hold."""

    def __init__(self, qualname, state):
        self.call = module(qualname, state)


class MemoPickler(TorchLikePickler):
    def save(self, obj, save_persistent_id=True):
        if isinstance(obj, Shared):
            hit = self.memo.get(id(obj))
            if hit is not None:
                self.write(self.get(hit[0]))
                return
            func, args, state = obj.call.__reduce__()
            self.save(func)
            self.save(args)
            self.write(pickle.REDUCE)
            self.memoize(obj)
            self.save(state)
            self.write(pickle.BUILD)
            return
        super().save(obj, save_persistent_id)


def dump(path, obj):
    storages, buf = {}, io.BytesIO()
    MemoPickler(buf, storages, 2).dump(obj)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", buf.getvalue())
        zf.writestr("archive/byteorder", b"little")
        for key, data in storages.items():
            zf.writestr(f"archive/data/{key}", np.asarray(data).tobytes())
    return path


def dag_model(depth: int):
    w = Tensor(Storage(np.ones(4, np.float32)), 0, (2, 2), (2, 1), parameter=True)
    m = Shared("torch.nn.modules.linear.Linear", module_state(params=[("weight", w)]))
    for _ in range(depth):  # each level points twice at the next: 2**depth paths
        m = Shared("torch.nn.modules.container.Sequential", module_state(modules=[("a", m), ("b", m)]))
    return Shared("mace.modules.models.ScaleShiftMACE", module_state(modules=[("interactions", m)]))


def test_dag_module_tree_is_refused_in_seconds(tmp_path):
    path = dump(tmp_path / "dag.model", dag_model(60))
    assert path.stat().st_size < 20_000
    t0 = time.perf_counter()
    obj = read_checkpoint(path)  # the pickle itself is small: memo references are shared
    with pytest.raises(CheckpointError, match=r"dag\.model: walking the module tree visits more than"):
        obj.state_dict()
    with pytest.raises(CheckpointError, match="DAG"):
        list(obj.named_modules(remove_duplicate=False))
    assert len(list(obj.named_modules())) == 62  # memoised walk: every module once
    with pytest.raises(CheckpointError, match=r"dag\.model: .*shared along many paths"):
        convert_to_memory(path)
    assert time.perf_counter() - t0 < 20


def test_small_dag_still_expands_like_torch(tmp_path):
    obj = read_checkpoint(dump(tmp_path / "dag.model", dag_model(3)))
    keys = list(obj.state_dict())
    assert len(keys) == 8 and keys[0] == "interactions.a.a.a.weight" and keys[-1] == "interactions.b.b.b.weight"


def _amplifying_pickle(n_items: int, n_calls: int, opcode: bytes) -> bytes:
    """A list of ``n_items`` (memoised) copied ``n_calls`` times by tuple(...) -- a few KB of pickle."""
    out = b"\x80\x02cbuiltins\ntuple\nq\x010" + b"]q\x00(" + b"K\x01" * n_items + b"e0" + b"]("
    call = b"h\x01h\x00\x85" + opcode  # tuple(L): REDUCE, or NEWOBJ cls.__new__(cls, L)
    return out + call * n_calls + b"e."


@pytest.mark.parametrize("opcode", [pickle.REDUCE, pickle.NEWOBJ])
def test_object_budget_stops_memo_amplification(tmp_path, opcode):
    # 10k copies of a 100k-item list would be 1e9 objects (8 GB); the budget stops it at once
    p = write_checkpoint(tmp_path / "amp.pt", [], extra={"data.pkl": _amplifying_pickle(100_000, 10_000, opcode)})
    t0 = time.perf_counter()
    with pytest.raises(CheckpointError, match=r"amp\.pt: unpickling builds more than 20000000 objects"):
        read_checkpoint(p)
    assert time.perf_counter() - t0 < 10
    # the same construction at a harmless size loads, as plain tuples
    p = write_checkpoint(tmp_path / "ok.pt", [], extra={"data.pkl": _amplifying_pickle(10, 3, opcode)})
    out = read_checkpoint(p)
    assert out == [(1,) * 10] * 3 and type(out[0]) is tuple
    with pytest.raises(CheckpointError, match="more than 20 objects"):
        read_checkpoint(p, max_objects=20)


def test_builtin_stand_ins_cannot_be_modified(tmp_path):
    # GLOBAL builtins.tuple, then BUILD with slot state {"x": 1}: would setattr on the shared class
    pkl = b"\x80\x02cbuiltins\ntuple\nN}q\x00X\x01\x00\x00\x00xK\x01s\x86b."
    p = write_checkpoint(tmp_path / "m.pt", [], extra={"data.pkl": pkl})
    with pytest.raises(CheckpointError):
        read_checkpoint(p)
    assert tuple([1, 2]) == (1, 2)


def test_stride0_tensor_reaching_gigabytes_is_refused(tmp_path):
    st = Storage(np.zeros(1, np.float32))
    # the probe's 663-byte file: one stored float viewed as 1e9 floats (4 GB, under the old 4 GiB cap)
    p = write_checkpoint(tmp_path / "s0.pt", [Tensor(st, 0, (1_000_000_000,), (0,))])
    assert p.stat().st_size < 2000
    t0 = time.perf_counter()
    with pytest.raises(CheckpointError, match=r"s0\.pt: .*exceeds the limit of \d+ bytes of tensor memory"):
        read_checkpoint(p)
    # below the memory cap, a view that repeats stored elements is still limited to 16 MiB
    p = write_checkpoint(tmp_path / "s1.pt", [Tensor(st, 0, (64, 1 << 20), (0, 0))])
    with pytest.raises(CheckpointError, match=r"s1\.pt: .*declares 67108864 elements but storage .* holds only 1"):
        read_checkpoint(p)
    assert time.perf_counter() - t0 < 5
    # a small genuine expand() view still loads
    out = read_checkpoint(write_checkpoint(tmp_path / "ok.pt", [Tensor(st, 0, (3, 4), (0, 0))]))
    np.testing.assert_array_equal(out[0], np.zeros((3, 4), np.float32))


def test_memory_cap_is_settable(tmp_path):
    st = Storage(np.arange(1000, dtype=np.float64), "DoubleStorage")
    p = write_checkpoint(tmp_path / "m.pt", [Tensor(st, 0, (1000,), (1,)), Tensor(st, 0, (1000,), (1,))])
    assert len(read_checkpoint(p)) == 2
    with pytest.raises(CheckpointError, match=r"m\.pt: reading tensor .* exceeds the limit of 12000 bytes of tensor memory"):
        read_checkpoint(p, max_memory_bytes=12_000)


def test_deep_module_nesting_error_names_the_file(tmp_path, monkeypatch):
    from jaxuft.checkpoints import torch_pickle

    monkeypatch.setattr(torch_pickle, "MAX_MODULE_DEPTH", 20)
    m = module("torch.nn.modules.container.Sequential", module_state())
    for _ in range(30):
        m = module("torch.nn.modules.container.Sequential", module_state(modules=[("0", m)]))
    out = read_checkpoint(write_checkpoint(tmp_path / "deep.pt", m))
    with pytest.raises(CheckpointError, match=r"deep\.pt: torch modules nested deeper than 20"):
        out.state_dict()


def test_old_torch_zip_layout_without_byteorder_record(tmp_path):
    """Files saved by older torch (the MACE-MP-0 era): top folder ``archive/``, no ``byteorder`` record."""
    st = Storage(np.arange(6, dtype=np.float64), "DoubleStorage")
    p = write_checkpoint(tmp_path / "old.model", {"w": Tensor(st, 0, (2, 3), (3, 1))}, prefix="archive",
                         drop=("byteorder",))
    with zipfile.ZipFile(p) as zf:
        assert "archive/byteorder" not in zf.namelist()
    np.testing.assert_array_equal(read_checkpoint(p)["w"], np.arange(6.0).reshape(2, 3))


def test_bytes_copied_inside_the_pickle_count_against_the_memory_cap(tmp_path):
    # one memoised 1 MB string encoded to bytes 10 000 times would be 10 GB
    s = b"a" * (1 << 20)
    pkl = (b"\x80\x02c_codecs\nencode\nq\x000" + b"X" + len(s).to_bytes(4, "little") + s + b"q\x010" + b"]("
           + b"h\x00h\x01X\x06\x00\x00\x00latin1\x86R" * 10_000 + b"e.")
    p = write_checkpoint(tmp_path / "enc.pt", [], extra={"data.pkl": pkl})
    t0 = time.perf_counter()
    with pytest.raises(CheckpointError, match=r"enc\.pt: reading bytes encoded inside data.pkl exceeds the limit"):
        read_checkpoint(p)
    assert time.perf_counter() - t0 < 10
    small = (b"\x80\x02c_codecs\nencode\nq\x000X\x03\x00\x00\x00abcq\x010](" + b"h\x00h\x01X\x06\x00\x00\x00latin1\x86R" * 3
             + b"e.")
    assert read_checkpoint(write_checkpoint(tmp_path / "ok.pt", [], extra={"data.pkl": small})) == [b"abc"] * 3
