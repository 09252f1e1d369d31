"""Read ``torch.save`` checkpoints without torch and without executing code.

A checkpoint written by ``torch.save`` (PyTorch >= 1.6) is a zip archive::

    <prefix>/data.pkl        the pickled object tree
    <prefix>/data/<key>      raw bytes of each tensor storage
    <prefix>/byteorder       "little" or "big" (optional; default little)
    <prefix>/version, ...    bookkeeping

:func:`read_checkpoint` validates the archive and unpickles ``data.pkl`` with
:class:`_RestrictedUnpickler`, whose ``find_class`` never imports a module.
Every global named in the pickle is looked up in ONE table (``_GLOBALS`` for
exact names, built by ``_global_table``; ``_PREFIXES`` for whole packages)
and replaced by an inert stand-in; anything not in the table raises :class:`UnsafeCheckpointError`
before it could do anything.

Allowed globals, and why
------------------------
* Tensor rebuild functions ``torch._utils._rebuild_tensor{,_v2,_v3}``,
  ``_rebuild_parameter``, ``_rebuild_parameter_with_state``,
  ``torch._tensor._rebuild_from_type_v2``: every tensor is pickled as a call
  to one of these.  Our own implementations copy the bytes out of the zip
  member into a ``numpy.ndarray`` (dtype, shape, strides, storage offset,
  byte order all honoured; bounds checked against the storage).
* Storage classes ``torch.FloatStorage`` ... ``torch.storage.UntypedStorage``
  (they only name the dtype of a storage record) and torch dtypes
  (``torch.float64`` pickles as the global ``torch float64``) -> inert
  :class:`TorchDtype` markers.  ``torch.Size`` -> tuple, ``torch.device`` ->
  str, ``torch.Tensor`` -> marker.
* Plain data constructors ``collections.OrderedDict``/``Counter``,
  ``builtins.set/frozenset/slice/complex/tuple/list/dict/object``,
  ``builtins.bytes/bytearray`` and ``_codecs.encode`` (protocol 2 pickles
  bytes that way; ours only accept data, never a huge length) and
  ``copyreg._reconstructor``/``__newobj__`` (our own versions, for placeholder
  classes only).
* numpy arrays/scalars/dtypes (``numpy[._]core.multiarray._reconstruct`` /
  ``scalar``, ``numpy.ndarray``, ``numpy.dtype``): rebuilt by us from raw
  bytes; only plain-data dtypes (bool/int/uint/float/complex/bytes/str/
  datetime), never object arrays.
* ``torch.fx.graph_module.reduce_graph_module`` (mace pickles fx GraphModules,
  e.g. ``SymmetricContraction``'s ``contractions_weighting``): torch would
  ``exec`` the generated Python source stored in the pickle; ours keeps that
  source as a string in a GraphModule placeholder.  ``torch.fx._symbolic_trace.
  Tracer`` (the GraphModule's ``_tracer_cls``) -> placeholder.
* Class names under ``torch.nn.modules.``, ``torch.nn.parameter.``,
  ``e3nn.``, ``mace.``, ``sevenn.`` and ``functools.partial`` ->
  :class:`PickledClass` placeholders (never imported); "instantiating" one
  records its arguments and BUILD state in a :class:`PickledObject`.
* Functions stored as values (activations): ``torch.nn.functional.*``, a few
  ``torch._C._nn.*`` (``F.gelu``, ``F.softplus``) and elementwise ``torch.*``
  functions (``torch.tanh``, ``torch.abs``...) -> :class:`PickledFunction`
  placeholders that refuse to be called.  torch pickles ``torch.tanh`` as
  ``getattr(torch._C._VariableFunctionsClass, "tanh")``, so
  ``builtins.getattr`` is allowed in exactly that form (our own version,
  which only knows that marker and those names; any other getattr is
  refused, and the real getattr is never called).

* Inside e3nn's ``__codegen__`` state only (bytes of TorchScript archives
  holding compiled submodules, see ``_expand_codegen``): ``__torch__.*``
  class names -> placeholders and ``torch.jit._pickle.restore_type_tag``/
  ``build_*list`` (identity/list).  The TorchScript code itself is never
  run; it is read as text only for its ``__parameters__``/``__buffers__``
  lists, so ``state_dict()`` matches torch's (``..._w3j_*`` buffers).

Everything else -- ``os.system``, ``posix.system``, ``builtins.eval``/
``exec``/``__import__``, any other ``getattr``, ``subprocess.Popen``, ``torch.jit``,
``torch._C``, TorchScript ``__torch__`` classes, anything unknown -- is
refused (a top-level TorchScript archive is refused as a whole).  Callers may
add package prefixes (``allow_prefixes``, checked first) whose names then
also become placeholders; that is safe because placeholders never run.

Tensors and parameters both become plain ``numpy.ndarray`` copies (a
module's ``_parameters`` vs ``_buffers`` dicts still tell them apart).
bfloat16 is widened to float32 (exactly; with a warning); float8/complex32/
quantized/sparse tensors are not supported.
"""

from __future__ import annotations

import _compat_pickle
import ast
import contextvars
import io
import math
import os
import pickle
import re
import struct
import warnings
import zipfile
import zlib
from collections import Counter, OrderedDict
from typing import Any, Iterable, Iterator

import numpy as np

from jaxuft.errors import CheckpointError, UnsafeCheckpointError

__all__ = [
    "read_checkpoint",
    "checkpoint_globals",
    "PickledClass",
    "PickledObject",
    "PickledFunction",
    "TorchDtype",
    "DEFAULT_MAX_TOTAL_BYTES",
    "DEFAULT_MAX_PICKLE_BYTES",
    "DEFAULT_MAX_OBJECTS",
]

DEFAULT_MAX_TOTAL_BYTES = 4 << 30  # decompressed zip content and tensor copies
DEFAULT_MAX_PICKLE_BYTES = 512 << 20  # size of data.pkl
DEFAULT_MAX_OBJECTS = 20_000_000  # objects (and container items) built while unpickling
MAX_MODULE_DEPTH = 200  # nesting of torch modules walked by the helpers
MAX_MODULE_VISITS = 200_000  # module visits of one tree walk (a DAG of shared modules expands)
MAX_EXPANDED_TENSOR_BYTES = 16 << 20  # a tensor bigger than its storage (stride 0) stays below this
AUTO_MEMORY_SLACK = 256 << 20  # default memory cap: 2x the stored tensor bytes + this

# Set while an unpickler runs: the _LoadContext of that load (object budget, file name).
_LOADING: contextvars.ContextVar = contextvars.ContextVar("jaxuft_loading", default=None)


class _LoadContext:
    """What one load shares with the placeholders it creates: the file name (for
    messages) and the budget on objects built (so a few KB of pickle that
    re-uses memoised containers cannot make billions of objects)."""

    __slots__ = ("path", "max_objects", "objects", "reader")

    def __init__(self, path: str, max_objects: int, reader=None):
        self.path, self.max_objects, self.objects = path, max_objects, 0
        self.reader = reader  # its memory cap also counts bytes copied inside the pickle

    def charge(self, n: int) -> None:
        self.objects += n
        if self.objects > self.max_objects:
            raise CheckpointError(
                f"{self.path}: unpickling builds more than {self.max_objects} objects (a pickle "
                "that re-uses its containers to multiply its size?); refusing. Raise max_objects "
                "if the file is genuine and trusted.")


def _charge(n: int) -> None:
    ctx = _LOADING.get()
    if ctx is not None:
        ctx.charge(n)


def _account_bytes(nbytes: int, what: str) -> None:
    """Bytes copied while unpickling (numpy arrays, bytes objects) count against the memory cap:
    one memoised blob built into many arrays must not multiply."""
    ctx = _LOADING.get()
    if ctx is not None and ctx.reader is not None:
        ctx.reader.account(nbytes, what)


def _weight(x) -> int:
    """Objects a constructor call with argument ``x`` may build (strings count as one:
    their bytes are already in the pickle)."""
    if isinstance(x, (list, tuple, dict, set, frozenset)):
        return 1 + len(x)
    return 1


class _Walk:
    """Budget of one walk over a module tree (torch expands shared modules on every
    path, so a DAG of depth n would list 2**n entries)."""

    __slots__ = ("visits", "where")

    def __init__(self, where: str):
        self.visits, self.where = 0, where

    def visit(self, depth: int) -> None:
        if depth > MAX_MODULE_DEPTH:
            raise CheckpointError(f"{self.where}: torch modules nested deeper than "
                                  f"{MAX_MODULE_DEPTH} (a cycle?); refusing to walk the tree")
        self.visits += 1
        if self.visits > MAX_MODULE_VISITS:
            raise CheckpointError(
                f"{self.where}: walking the module tree visits more than {MAX_MODULE_VISITS} "
                "modules: submodules are shared along many paths (a DAG, which torch would "
                "also expand on every path); this is not a model file jaxuft can convert")

# Set while an unpickler runs: called with every PickledObject after its BUILD.
_ON_SETSTATE: contextvars.ContextVar = contextvars.ContextVar("jaxuft_on_setstate",
                                                             default=None)


# --------------------------------------------------------------------------
# placeholders
# --------------------------------------------------------------------------


class PickledClass(type):
    """Stand-in for a class named in a checkpoint (the class is never imported).

    ``PickledClass("mace.modules.models.ScaleShiftMACE")`` makes one; calling
    it (pickle REDUCE/NEWOBJ) gives a :class:`PickledObject`.  Its
    ``qualname`` is the dotted name from the pickle.
    """

    def __new__(mcls, qualname, bases=None, namespace=None):
        if bases is None:  # PickledClass("pkg.mod.Name")
            name = qualname.rpartition(".")[2] or qualname
            namespace = {"_pk_qualname": qualname, "__qualname__": name,
                         "__module__": "jaxuft.pickled", "__slots__": ()}
            qualname, bases = name, (PickledObject,)
        return super().__new__(mcls, qualname, bases, namespace)

    def __init__(cls, *args, **kwargs):
        pass

    def __setattr__(cls, name, value):
        raise CheckpointError("malformed pickle: attempt to modify a class stand-in")

    __delattr__ = __setattr__

    @property
    def qualname(cls) -> str:
        return cls._pk_qualname

    def __repr__(cls) -> str:
        return f"PickledClass({cls._pk_qualname!r})"


class PickledObject:
    """An instance of a :class:`PickledClass`: pure data, no behaviour.

    * ``qualname`` -- dotted class name, e.g. ``"e3nn.o3._irreps.Irreps"``.
    * ``args`` / ``kwargs`` -- the constructor arguments from the pickle.
    * ``state`` -- the raw BUILD state (what ``__getstate__`` returned);
      dict state (and the dicts of a ``(dict, slots)`` tuple) is also merged
      into the instance ``__dict__`` so ``obj.r_max`` works.
    * ``listitems`` / ``dictitems`` -- data of list/dict subclasses.
    * ``items`` -- the data of tuple/list subclasses (e3nn ``Irreps`` is a
      tuple of ``(mul, Irrep)``; an ``Irrep`` is ``(l, p)``): the appended
      items, else the single tuple/list argument, else ``args``.
      ``len(obj)``, ``obj[i]`` and ``iter(obj)`` use it.

    Objects with the ``torch.nn.Module`` layout (``_modules``,
    ``_parameters``, ``_buffers`` in their state) also get the torch helpers
    ``named_modules``, ``children``, ``named_parameters``, ``state_dict``, ...
    and attribute access falls through to those dicts like torch's does.  For
    such objects ``len``/``iter``/``[]`` follow ``ModuleList``/``ModuleDict``.
    State attributes that collide with these names stay reachable through
    ``obj.__dict__`` / ``obj.state``.
    """

    __slots__ = ("_pk_args", "_pk_kwargs", "_pk_state", "_pk_list", "_pk_dict",
                 "_pk_source", "__dict__")
    _pk_qualname = "?"

    def __new__(cls, *args, **kwargs):
        self = object.__new__(cls)
        self._pk_args, self._pk_kwargs, self._pk_state = args, kwargs, None
        self._pk_list, self._pk_dict = [], {}
        ctx = _LOADING.get()
        self._pk_source = ctx.path if ctx is not None else "checkpoint"
        if ctx is not None:
            ctx.charge(1 + len(args) + len(kwargs))
        return self

    def __init__(self, *args, **kwargs):
        pass

    # -- pickle protocol (called by the unpickler; never resolves real code)
    def __setstate__(self, state):
        if not isinstance(self, PickledObject):  # BUILD aimed at the class
            raise CheckpointError("malformed pickle: BUILD applied to a class")
        self._pk_state = state
        parts = state if _is_dict_slots_pair(state) else (state,)
        for part in parts:
            if isinstance(part, dict):
                _charge(1 + len(part))
                self.__dict__.update((k, v) for k, v in part.items() if isinstance(k, str))
        hook = _ON_SETSTATE.get()
        if hook is not None:
            hook(self)

    def append(self, item):  # APPENDS on a list subclass
        _charge(1)
        self._pk_list.append(item)

    def extend(self, items):
        items = list(items)
        _charge(len(items))
        self._pk_list.extend(items)

    def __setitem__(self, key, value):  # SETITEMS on a dict subclass
        _charge(1)
        self._pk_dict[key] = value

    # -- generic data access
    qualname = property(lambda self: type(self)._pk_qualname)
    args = property(lambda self: self._pk_args)
    kwargs = property(lambda self: self._pk_kwargs)
    state = property(lambda self: self._pk_state)
    listitems = property(lambda self: self._pk_list)
    dictitems = property(lambda self: self._pk_dict)

    @property
    def items(self) -> tuple:
        if self._pk_list:
            return tuple(self._pk_list)
        a = self._pk_args
        if len(a) == 1 and isinstance(a[0], (tuple, list)):
            return tuple(a[0])
        return a

    def __len__(self):
        return len(self._modules) if self.is_module else len(self.items)

    def __iter__(self):
        return iter(self._modules.values() if self.is_module else self.items)

    def __getitem__(self, key):
        if self.is_module:
            if isinstance(key, str):
                return self._modules[key]
            return list(self._modules.values())[key]
        if isinstance(key, (int, slice)):
            return self.items[key]
        return self._pk_dict[key]

    def __getattr__(self, name):  # only called when normal lookup fails
        if not name.startswith("__"):
            d = object.__getattribute__(self, "__dict__")
            for k in ("_parameters", "_buffers", "_modules"):
                sub = d.get(k)
                if isinstance(sub, dict) and name in sub:
                    return sub[name]
        raise AttributeError(f"{type(self)._pk_qualname} (pickled) has no attribute {name!r}")

    def __repr__(self):
        q = type(self)._pk_qualname
        if self.is_module:
            return f"<pickled {q} module>"
        body = repr(self.items if self.items else self._pk_args)
        return f"<pickled {q}{body if len(body) < 200 else body[:196] + '...)'}>"

    # -- torch.nn.Module helpers
    @property
    def is_module(self) -> bool:
        """True if this object has the ``torch.nn.Module`` state layout."""
        d = self.__dict__
        return all(isinstance(d.get(k), dict) for k in ("_modules", "_parameters", "_buffers"))

    def _require_module(self):
        if not self.is_module:
            raise TypeError(f"{type(self)._pk_qualname} is not a torch.nn.Module "
                            "(no _modules/_parameters/_buffers state)")

    def named_children(self) -> Iterator[tuple[str, PickledObject]]:
        self._require_module()
        for name, m in self._modules.items():
            if m is not None:
                yield name, m

    def children(self) -> Iterator[PickledObject]:
        for _, m in self.named_children():
            yield m

    def named_modules(self, memo=None, prefix: str = "", remove_duplicate: bool = True,
                      _depth: int = 0, _walk: "_Walk | None" = None):
        """Like ``torch.nn.Module.named_modules`` (self first, depth first).

        Raises :class:`CheckpointError` (naming the file) for trees nested deeper than
        ``MAX_MODULE_DEPTH`` or walks longer than ``MAX_MODULE_VISITS``."""
        self._require_module()
        walk = _Walk(self._pk_source) if _walk is None else _walk
        memo = set() if memo is None else memo
        stack = [(prefix, self, _depth)]  # explicit pre-order stack: no generator chain per level
        while stack:
            pre, mod, depth = stack.pop()
            walk.visit(depth)
            if remove_duplicate:
                if id(mod) in memo:
                    continue
                memo.add(id(mod))
            yield pre, mod
            children = [(f"{pre}.{name}" if pre else name, m, depth + 1)
                        for name, m in mod._modules.items() if isinstance(m, PickledObject)]
            stack.extend(reversed(children))

    def modules(self) -> Iterator[PickledObject]:
        for _, m in self.named_modules():
            yield m

    def _named_tensors(self, kind: str, prefix: str, recurse: bool, remove_duplicate: bool):
        mods = self.named_modules(prefix=prefix, remove_duplicate=remove_duplicate) \
            if recurse else [(prefix, self)]
        seen = set()
        for mprefix, m in mods:
            for name, t in m.__dict__[kind].items():
                if t is None or (remove_duplicate and id(t) in seen):
                    continue
                seen.add(id(t))
                yield (f"{mprefix}.{name}" if mprefix else name), t

    def named_parameters(self, prefix: str = "", recurse: bool = True,
                         remove_duplicate: bool = True) -> Iterator[tuple[str, np.ndarray]]:
        self._require_module()
        return self._named_tensors("_parameters", prefix, recurse, remove_duplicate)

    def named_buffers(self, prefix: str = "", recurse: bool = True,
                      remove_duplicate: bool = True) -> Iterator[tuple[str, np.ndarray]]:
        self._require_module()
        return self._named_tensors("_buffers", prefix, recurse, remove_duplicate)

    def parameters(self, recurse: bool = True) -> Iterator[np.ndarray]:
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    def buffers(self, recurse: bool = True) -> Iterator[np.ndarray]:
        for _, b in self.named_buffers(recurse=recurse):
            yield b

    def state_dict(self, prefix: str = "", _depth: int = 0, _walk: "_Walk | None" = None,
                   _out: "OrderedDict | None" = None) -> "OrderedDict[str, np.ndarray]":
        """Flattened parameters and persistent buffers, named exactly like
        ``torch.nn.Module.state_dict()`` (arrays are shared, not copied;
        ``get_extra_state`` and state-dict hooks are not reproduced).  A shared
        submodule appears under every path, as in torch; a tree whose sharing
        expands past ``MAX_MODULE_VISITS`` visits is refused (naming the file)."""
        self._require_module()
        walk = _Walk(self._pk_source) if _walk is None else _walk
        walk.visit(_depth)
        out: OrderedDict[str, np.ndarray] = OrderedDict() if _out is None else _out
        d = self.__dict__
        skip = d.get("_non_persistent_buffers_set") or ()
        for name, p in d["_parameters"].items():
            if p is not None:
                out[prefix + name] = p
        for name, b in d["_buffers"].items():
            if b is not None and name not in skip:
                out[prefix + name] = b
        for name, m in d["_modules"].items():
            if isinstance(m, PickledObject):
                m.state_dict(prefix + name + ".", _depth + 1, walk, out)
        return out


def _is_dict_slots_pair(state) -> bool:
    return (isinstance(state, tuple) and len(state) == 2
            and all(s is None or isinstance(s, dict) for s in state))


class _Frozen:
    """Shared stand-ins are immutable, so a malicious BUILD opcode cannot alter
    them for later loads."""

    __slots__ = ()

    def __setattr__(self, name, value):
        raise CheckpointError("malformed pickle: attempt to modify a shared stand-in")

    __delattr__ = __setattr__

    def _init(self, **attrs):
        for k, v in attrs.items():
            object.__setattr__(self, k, v)


class _Callable(_Frozen):
    """An allowed data constructor (our own safe implementation)."""

    __slots__ = ("qualname", "fn")

    def __init__(self, qualname, fn):
        self._init(qualname=qualname, fn=fn)

    def __call__(self, *args, **kwargs):
        _charge(1 + sum(map(_weight, args)) + sum(map(_weight, kwargs.values())))
        return self.fn(*args, **kwargs)

    def __repr__(self):
        return f"<allowed {self.qualname}>"


class PickledFunction(_Frozen):
    """Stand-in for a function stored as a value (e.g. an activation such as
    ``torch.nn.functional.silu``).  Compares equal by ``qualname``; calling
    it is refused."""

    __slots__ = ("qualname",)

    def __init__(self, qualname: str):
        self._init(qualname=qualname)

    def __call__(self, *args, **kwargs):
        raise UnsafeCheckpointError(
            f"the checkpoint calls {self.qualname} while loading; jaxuft never "
            "executes functions named in a checkpoint (nothing was executed)")

    def __eq__(self, other):
        return isinstance(other, PickledFunction) and other.qualname == self.qualname

    def __hash__(self):
        return hash(("PickledFunction", self.qualname))

    def __repr__(self):
        return f"PickledFunction({self.qualname!r})"


class TorchDtype(_Frozen):
    """A torch dtype found in a checkpoint, e.g. ``TorchDtype('float64')``.

    ``numpy`` is the numpy dtype tensors of this type are read as (bfloat16
    -> float32), or None when unsupported.  Equal to the same-named dtype."""

    __slots__ = ("name", "numpy", "storage", "_raw")

    def __init__(self, name, numpy_dtype, storage_name, raw=None):
        self._init(name=name, storage=storage_name,
                   numpy=None if numpy_dtype is None else np.dtype(numpy_dtype),
                   _raw=None if raw is None else np.dtype(raw))  # on-disk dtype if != numpy

    def __eq__(self, other):
        return isinstance(other, TorchDtype) and other.name == self.name

    def __hash__(self):
        return hash(("TorchDtype", self.name))

    def __repr__(self):
        return f"torch.{self.name}"


# torch dtype name -> (numpy dtype read as, legacy storage class, aliases)
_DTYPE_TABLE = {
    "float64": ("<f8", "DoubleStorage", ("double",)),
    "float32": ("<f4", "FloatStorage", ("float",)),
    "float16": ("<f2", "HalfStorage", ("half",)),
    "bfloat16": ("<f4", "BFloat16Storage", ()),  # stored as <u2, widened
    "int64": ("<i8", "LongStorage", ("long",)),
    "int32": ("<i4", "IntStorage", ("int",)),
    "int16": ("<i2", "ShortStorage", ("short",)),
    "int8": ("i1", "CharStorage", ()),
    "uint8": ("u1", "ByteStorage", ()),
    "bool": ("?", "BoolStorage", ()),
    "complex64": ("<c8", "ComplexFloatStorage", ("cfloat",)),
    "complex128": ("<c16", "ComplexDoubleStorage", ("cdouble",)),
    "uint16": ("<u2", None, ()),
    "uint32": ("<u4", None, ()),
    "uint64": ("<u8", None, ()),
    **{q: (None, s, ()) for q, s in [("qint8", "QInt8Storage"), ("qint32", "QInt32Storage"),
                                    ("quint8", "QUInt8Storage"), ("quint4x2", "QUInt4x2Storage"),
                                    ("quint2x4", "QUInt2x4Storage")]},
    **{n: (None, None, ()) for n in ("float8_e5m2", "float8_e4m3fn", "float8_e5m2fnuz",
                                     "float8_e4m3fnuz", "float8_e8m0fnu", "complex32")},
}
_DTYPES = {n: TorchDtype(n, npd, st, "<u2" if n == "bfloat16" else None)
           for n, (npd, st, _) in _DTYPE_TABLE.items()}
_DTYPE_BY_NAME = dict(_DTYPES)
_DTYPE_BY_NAME.update((a, _DTYPES[n]) for n, (_, _, al) in _DTYPE_TABLE.items() for a in al)
_UNTYPED = TorchDtype("uint8", "u1", "UntypedStorage")  # byte storage of v3 tensors


class _StorageType(_Frozen):
    """What ``torch.FloatStorage`` etc. resolve to: just the element dtype."""

    __slots__ = ("dtype",)

    def __init__(self, dtype: TorchDtype):
        self._init(dtype=dtype)


_STORAGE_TYPES = {d.storage: _StorageType(d) for d in _DTYPES.values() if d.storage}


class _Marker(_Frozen):
    """An allowed global that is only ever used as an argument (never called
    for its result), e.g. ``torch.Tensor`` or ``numpy.ndarray``."""

    __slots__ = ("qualname",)

    def __init__(self, qualname):
        self._init(qualname=qualname)

    def __call__(self, *args, **kwargs):
        raise CheckpointError(f"unsupported pickle: {self.qualname} called directly")

    def __repr__(self):
        return f"<{self.qualname}>"


_TENSOR = _Marker("torch.Tensor")
_NDARRAY = _Marker("numpy.ndarray")


# --------------------------------------------------------------------------
# numpy objects inside pickles
# --------------------------------------------------------------------------

_NUMPY_KINDS = "biufcSUMm"  # plain data only: no object ('O') or structured ('V')


class _NumpyDtype:
    """``numpy.dtype(...)`` from a pickle; BUILD state may set the byte order."""

    def __init__(self, spec, align=False, copy=True):
        try:
            self.dtype = np.dtype(spec) if isinstance(spec, str) else None
        except TypeError:
            self.dtype = None
        if self.dtype is None or self.dtype.kind not in _NUMPY_KINDS:
            raise CheckpointError(f"unsupported numpy dtype in checkpoint: {spec!r}")

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">"):
            self.dtype = self.dtype.newbyteorder(state[1])

    def __repr__(self):
        return repr(self.dtype)


def _np_dtype(d) -> np.dtype:
    if isinstance(d, _NumpyDtype):
        return d.dtype
    raise CheckpointError(f"malformed numpy object in checkpoint (dtype is {type(d).__name__})")


class _UnpickledNdarray(np.ndarray):
    """A numpy array that was pickled inside ``data.pkl`` (a plain ndarray
    subclass; ``np.asarray`` gives the base class).  Its ``__setstate__``
    accepts only raw bytes of a plain-data dtype."""

    def __setstate__(self, state):
        if not (isinstance(state, tuple) and len(state) == 5):
            raise CheckpointError("malformed numpy array state in checkpoint")
        _, shape, dt, fortran, raw = state
        dt = _np_dtype(dt)
        if not (isinstance(shape, tuple) and all(isinstance(n, int) and n >= 0 for n in shape)):
            raise CheckpointError(f"malformed numpy array shape {shape!r} in checkpoint")
        if not isinstance(raw, (bytes, bytearray)) or len(raw) != math.prod(shape) * dt.itemsize:
            raise CheckpointError("numpy array in checkpoint: data does not match shape/dtype")
        _account_bytes(len(raw), f"a numpy array of shape {shape} inside data.pkl")
        np.ndarray.__setstate__(self, (shape, dt, bool(fortran), bytes(raw)))


def _np_reconstruct(subtype, shape, dtype_code):
    if subtype is not _NDARRAY:
        raise CheckpointError("unsupported numpy array subclass in checkpoint")
    return np.ndarray.__new__(_UnpickledNdarray, (0,), np.uint8)


def _np_scalar(dtype, data=None):
    dt = _np_dtype(dtype)
    if not isinstance(data, bytes) or len(data) != dt.itemsize:
        raise CheckpointError("numpy scalar in checkpoint: data does not match dtype")
    return np.frombuffer(data, dt)[0].copy()


# --------------------------------------------------------------------------
# small safe replacements for builtins
# --------------------------------------------------------------------------


def _codecs_encode(obj, encoding="utf-8"):  # protocol-2 bytes: encode(str, 'latin1')
    if not isinstance(obj, str) or encoding.replace("-", "").lower() not in ("latin1", "utf8"):
        raise CheckpointError("unsupported _codecs.encode call in checkpoint")
    _account_bytes(len(obj), "bytes encoded inside data.pkl")
    return obj.encode(encoding)


def _bytes_like(kind):
    def make(data=b"", encoding=None):
        if isinstance(data, str) and encoding is not None:
            data = _codecs_encode(data, encoding)
        if not isinstance(data, (bytes, bytearray, list, tuple)):
            raise CheckpointError(f"unsupported {kind.__name__}() call in checkpoint")
        _account_bytes(len(data), f"{kind.__name__} built inside data.pkl")
        return kind(data)
    return make


def _reconstructor(cls, base, state):  # copyreg._reconstructor, protocols 0/1
    if not isinstance(cls, PickledClass):
        raise CheckpointError(f"unsupported copyreg._reconstructor call for {cls!r}")
    obj = cls.__new__(cls)
    if state is not None:
        obj._pk_args = (state,)
    return obj


def _newobj(cls, *args):  # copyreg.__newobj__ (protocol 2 objects pickled at 0/1)
    if not isinstance(cls, PickledClass):
        raise CheckpointError(f"unsupported copyreg.__newobj__ call for {cls!r}")
    return cls.__new__(cls, *args)


_GRAPH_MODULE = PickledClass("torch.fx.graph_module.GraphModule")


def _fx_graph_module(body, import_block=""):
    """``torch.fx.graph_module.reduce_graph_module(body, import_block)``: torch
    would exec the generated source ``body["_code"]``; we keep it as text and
    return a GraphModule placeholder whose state is ``body`` (a Module layout)."""
    if not isinstance(body, dict) or not isinstance(import_block, str):
        raise CheckpointError("malformed torch.fx GraphModule in checkpoint")
    obj = _GRAPH_MODULE(body, import_block)
    obj.__setstate__(body)
    return obj


def _torch_size(dims=()):
    return tuple(dims)


def _torch_device(kind="cpu", index=None):
    return str(kind) if index is None else f"{kind}:{index}"


# --------------------------------------------------------------------------
# the one table of allowed globals
# --------------------------------------------------------------------------

_CLASS, _FUNCTION = "class", "function"

# Module-prefix rules: (prefix, what names under it become).
_PREFIXES: tuple[tuple[str, str], ...] = (
    ("torch.nn.modules.", _CLASS),
    ("torch.nn.parameter.", _CLASS),
    ("torch.nn.functional.", _FUNCTION),
    ("e3nn.", _CLASS),
    ("mace.", _CLASS),
    ("sevenn.", _CLASS),
)

# Elementwise torch functions that models store as activations.  torch pickles
# ``torch.tanh`` as ``getattr(torch._C._VariableFunctionsClass, "tanh")`` and
# ``F.gelu`` as ``torch._C._nn.gelu``; both become PickledFunction placeholders
# named ``torch.tanh`` / ``torch.nn.functional.gelu``.
_TORCH_FUNCTIONS = ("tanh", "sigmoid", "relu", "abs", "exp", "log", "sin", "cos", "sqrt",
                    "square", "erf", "sign", "neg", "softmax", "log_softmax")
_NN_FUNCTIONS = ("gelu", "softplus", "elu", "leaky_relu", "hardtanh", "silu", "mish", "relu6",
                 "hardsigmoid", "hardswish", "log_sigmoid")
_TORCH_NS = _Marker("torch._C._VariableFunctionsClass")


def _getattr(obj, name):
    """``builtins.getattr`` -- only in the one form torch uses for its builtin
    functions; any other use is refused (the real getattr is never called)."""
    if obj is _TORCH_NS and name in _TORCH_FUNCTIONS:
        return PickledFunction(f"torch.{name}")
    raise _Refused(f"builtins.getattr({obj!r:.80}, {name!r:.80})")


class _FrozenType(type):
    """Metaclass of the charged container types: a BUILD opcode cannot modify them."""

    def __setattr__(cls, name, value):
        raise CheckpointError("malformed pickle: attempt to modify a shared stand-in")

    __delattr__ = __setattr__


def _charged_type(base: type, qualname: str) -> type:
    """A stand-in for the container type ``base`` that charges the load's object
    budget by the size of its arguments and returns a plain ``base`` instance (for
    REDUCE calls and NEWOBJ ``cls.__new__(cls, ...)`` alike)."""

    def __new__(cls, *args, **kwargs):
        _charge(1 + sum(map(_weight, args)) + sum(map(_weight, kwargs.values())))
        return base(*args, **kwargs)

    return _FrozenType(base.__name__, (base,), {"__new__": __new__, "__slots__": (),
                                                "__qualname__": qualname})


_CHARGED_TYPES = {q: _charged_type(t, q) for q, t in [
    ("collections.OrderedDict", OrderedDict), ("collections.Counter", Counter),
    ("builtins.set", set), ("builtins.frozenset", frozenset), ("builtins.complex", complex),
    ("builtins.tuple", tuple), ("builtins.list", list), ("builtins.dict", dict)]}


# Refused with a specific explanation (still UnsafeCheckpointError).
_REFUSED_HINTS = {
    "torch.jit.": "TorchScript objects carry compiled code",
    "torch._C.": "torch C++ internals are never needed for weights",
    "__torch__.": "this is TorchScript, which carries compiled code",
    "torch.fx.": "only the torch.fx GraphModule reduce function and Tracer are allowed",
}


def _global_table() -> dict[str, Any]:
    """Exact dotted name -> the stand-in :meth:`find_class` returns (a str
    names a method of the unpickler).  Only immutable objects are shared."""
    t: dict[str, Any] = {
        **_CHARGED_TYPES,
        "builtins.slice": slice, "builtins.object": object,
        "builtins.bytes": _bytes_like(bytes), "builtins.bytearray": _bytes_like(bytearray),
        "_codecs.encode": _codecs_encode,
        "copyreg._reconstructor": _reconstructor,
        "copyreg.__newobj__": _newobj,
        "torch.Size": _torch_size,
        "torch.device": _torch_device,
        "torch.Tensor": _TENSOR, "torch._tensor.Tensor": _TENSOR,
        "torch.storage.UntypedStorage": _StorageType(_UNTYPED),
        "torch.UntypedStorage": _StorageType(_UNTYPED),
        "numpy.ndarray": _NDARRAY,
        "numpy.dtype": _NumpyDtype,
        "functools.partial": PickledClass("functools.partial"),
        "torch.fx.graph_module.reduce_graph_module": _fx_graph_module,
        "torch.fx._symbolic_trace.Tracer": PickledClass("torch.fx._symbolic_trace.Tracer"),
    }
    for core in ("numpy.core", "numpy._core"):
        t[f"{core}.multiarray._reconstruct"] = _np_reconstruct
        t[f"{core}.multiarray.scalar"] = _np_scalar
    t.update({f"torch.{n}": d for n, d in _DTYPE_BY_NAME.items()})
    t.update({f"torch.{n}": s for n, s in _STORAGE_TYPES.items()})
    t.update({f"torch.{n}": PickledFunction(f"torch.{n}") for n in _TORCH_FUNCTIONS})
    t.update({f"torch._C._nn.{n}": PickledFunction(f"torch.nn.functional.{n}")
              for n in _NN_FUNCTIONS})
    t["torch._C._VariableFunctionsClass"] = _TORCH_NS
    t["builtins.getattr"] = _getattr
    for fn in ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3",
               "_rebuild_parameter", "_rebuild_parameter_with_state"):
        t[f"torch._utils.{fn}"] = fn  # bound to the unpickler's method
    t["torch._tensor._rebuild_from_type_v2"] = "_rebuild_from_type_v2"
    t["torch.tensor._rebuild_from_type_v2"] = "_rebuild_from_type_v2"  # old module name
    # Shared stand-ins must be immutable: builtin types are; wrap our functions.
    unwrapped = (slice, object, *_CHARGED_TYPES.values())
    return {k: v if isinstance(v, (str, _Frozen, PickledClass)) or v in unwrapped
            else _Callable(k, v) for k, v in t.items()}


_GLOBALS = _global_table()

# Only inside the TorchScript blobs of e3nn's ``__codegen__`` state (see
# ``_expand_codegen``): torch.jit's pickler tags typed containers with these
# (torch's own versions just return their argument), and ``__torch__.*``
# classes become placeholders.
_TORCHSCRIPT_GLOBALS = {
    f"torch.jit._pickle.{n}": _Callable(f"torch.jit._pickle.{n}", f)
    for n, f in [("restore_type_tag", lambda value, type_str=None: value),
                 ("build_intlist", list), ("build_tensorlist", list),
                 ("build_doublelist", list), ("build_boollist", list)]}


# --------------------------------------------------------------------------
# the unpickler
# --------------------------------------------------------------------------


class _Storage:
    """A storage record referenced by a persistent id."""

    __slots__ = ("key", "dtype", "numel")

    def __init__(self, key, dtype, numel):
        self.key, self.dtype, self.numel = key, dtype, numel


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, reader: "_ZipReader", allow_prefixes=(), permissive=False,
                 torchscript=False, max_objects: int = DEFAULT_MAX_OBJECTS):
        super().__init__(file, encoding="utf-8")
        self.reader = reader
        self.max_objects = max_objects
        self.allow_prefixes = tuple(p if p.endswith(".") else p + "." for p in allow_prefixes)
        self.torchscript = torchscript  # inside an e3nn __codegen__ TorchScript blob
        self.codegen: list[PickledObject] = []  # objects whose state has __codegen__
        self.permissive = permissive  # collect refused names instead of raising
        self.refused: list[str] = []
        self.seen: set[str] = set()
        self.classes: dict[str, PickledClass] = {}
        self.bf16 = False

    # -- globals
    def find_class(self, module, name):
        if not isinstance(module, str) or not isinstance(name, str):
            raise CheckpointError("malformed pickle: non-string global name")
        # protocol <= 2 pickles written by Python 3 use Python 2 names
        # (``__builtin__.set``, ``copy_reg._reconstructor``): map them back.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        qualname = f"{module}.{name}"
        self.seen.add(qualname)
        hit = _GLOBALS.get(qualname)
        if hit is None and self.torchscript:
            hit = _TORCHSCRIPT_GLOBALS.get(qualname)
        if hit is not None:
            if self.permissive and hit is _GLOBALS["builtins.getattr"]:
                return self._permissive_getattr
            return getattr(self, hit) if isinstance(hit, str) else hit
        kind = self._prefix_kind(qualname)
        if kind == _FUNCTION:
            return PickledFunction(qualname)
        if kind == _CLASS:
            if qualname not in self.classes:
                self.classes[qualname] = PickledClass(qualname)
            return self.classes[qualname]
        if self.permissive:
            self.refused.append(qualname)
            return _SinkClass(qualname)
        raise _Refused(qualname)

    def _prefix_kind(self, qualname: str) -> str | None:
        if not _is_dotted_name(qualname):
            return None
        if qualname.startswith(self.allow_prefixes):  # the caller's choice comes first
            return _CLASS
        if self.torchscript and qualname.startswith("__torch__."):
            return _CLASS
        if qualname.startswith(tuple(_REFUSED_HINTS)):
            return None
        return next((kind for p, kind in _PREFIXES if qualname.startswith(p)), None)

    def _permissive_getattr(self, obj, name):
        try:
            return _getattr(obj, name)
        except _Refused as r:
            self.refused.append(r.qualname)
            return _SinkClass(r.qualname)

    # -- storages
    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] in ("storage", b"storage")):
            raise CheckpointError(f"unsupported persistent id in data.pkl: {pid!r:.200}")
        _, stype, key, _location, numel = pid
        if not isinstance(stype, _StorageType):
            raise CheckpointError(f"persistent id names {stype!r:.100} instead of a storage class")
        if not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
            raise CheckpointError(f"malformed storage id in data.pkl: {pid!r:.200}")
        if stype.dtype.numpy is None:
            raise CheckpointError(f"tensors of dtype torch.{stype.dtype.name} are not supported")
        return _Storage(key, stype.dtype, numel)

    # -- tensors
    def _rebuild_tensor(self, storage, offset, size, stride, dtype=None):
        if not isinstance(storage, _Storage):
            raise CheckpointError("malformed tensor in data.pkl: storage is not a storage record")
        if dtype is None:
            dtype = storage.dtype
        elif not isinstance(dtype, TorchDtype):
            raise CheckpointError(f"malformed tensor in data.pkl: dtype {dtype!r:.100}")
        elif dtype.numpy is None:
            raise CheckpointError(f"tensors of dtype torch.{dtype.name} are not supported")
        if not (_is_int_tuple(size) and _is_int_tuple(stride) and len(size) == len(stride)
                and isinstance(offset, int) and offset >= 0):
            raise CheckpointError(f"malformed tensor in data.pkl: size={size!r:.100} "
                                  f"stride={stride!r:.100} offset={offset!r:.50}")
        raw = dtype._raw or dtype.numpy  # on-disk element type
        out_nbytes = math.prod(size) * dtype.numpy.itemsize
        self.reader.account(out_nbytes, f"tensor of shape {tuple(size)}")
        if 0 in size:
            arr = np.zeros(size, dtype=dtype.numpy)
        else:
            data = self.reader.storage_bytes(storage)
            numel = len(data) // raw.itemsize
            extent = offset + sum((n - 1) * s for n, s in zip(size, stride)) + 1
            if extent > numel:
                raise CheckpointError(
                    f"tensor of shape {tuple(size)} (stride {tuple(stride)}, offset {offset}) "
                    f"needs {extent} elements of {raw} but storage data/{storage.key} "
                    f"holds only {numel}; the checkpoint is corrupt")
            if math.prod(size) > numel and out_nbytes > MAX_EXPANDED_TENSOR_BYTES:
                raise CheckpointError(
                    f"tensor of shape {tuple(size)} (stride {tuple(stride)}) declares "
                    f"{math.prod(size)} elements but storage data/{storage.key} holds only "
                    f"{numel}: repeating stored elements (stride 0) to {out_nbytes} bytes exceeds "
                    f"the limit of {MAX_EXPANDED_TENSOR_BYTES} bytes for such views; refusing")
            base = np.frombuffer(data, dtype=raw.newbyteorder(self.reader.byteorder), count=numel)
            view = np.lib.stride_tricks.as_strided(
                base[offset:], shape=size, strides=[s * raw.itemsize for s in stride],
                writeable=False)
            arr = np.array(view, dtype=raw.newbyteorder("="), order="C", copy=True)
            if dtype.name == "bfloat16":  # bf16 is the top half of a float32
                arr = (arr.astype(np.uint32) << 16).view(np.float32)
        if dtype.name == "bfloat16":
            self.bf16 = True
        return arr

    def _rebuild_tensor_v2(self, storage, offset, size, stride, requires_grad=False,
                           backward_hooks=None, metadata=None):
        return self._rebuild_tensor(storage, offset, size, stride)

    def _rebuild_tensor_v3(self, storage, offset, size, stride, requires_grad, backward_hooks,
                           dtype, metadata=None):
        return self._rebuild_tensor(storage, offset, size, stride, dtype)

    def _rebuild_parameter(self, data, requires_grad=True, backward_hooks=None, state=None):
        if not isinstance(data, np.ndarray):
            raise CheckpointError("malformed parameter in data.pkl: data is not a tensor")
        return data

    _rebuild_parameter_with_state = _rebuild_parameter

    def load(self):
        token = _ON_SETSTATE.set(self._setstate_seen)
        ctx = _LOADING.get()  # a TorchScript blob inside a file shares the file's budget
        ctx_token = _LOADING.set(_LoadContext(self.reader.path, self.max_objects, self.reader)
                                 if ctx is None else ctx)
        try:
            obj = super().load()
        finally:
            _ON_SETSTATE.reset(token)
            _LOADING.reset(ctx_token)
        for o in self.codegen:
            _expand_codegen(o, self)
        return obj

    def _setstate_seen(self, obj: PickledObject):
        if isinstance(obj.__dict__.get("__codegen__"), dict):
            self.codegen.append(obj)

    def _rebuild_from_type_v2(self, func, new_type, args, state):
        # Tensor subclasses / tensors with Python attributes: keep the data
        # (the attributes in `state` are dropped).
        if not (callable(func) and getattr(func, "__self__", None) is self
                and isinstance(args, tuple)):
            raise CheckpointError("unsupported tensor reconstruction in data.pkl")
        return func(*args)


# --------------------------------------------------------------------------
# e3nn CodeGenMixin: compiled submodules stored as TorchScript bytes
# --------------------------------------------------------------------------


def _expand_codegen(obj: PickledObject, parent: _RestrictedUnpickler) -> None:
    """Do what ``e3nn.util.codegen.CodeGenMixin.__setstate__`` does, minus
    the code: its state maps submodule names to bytes of TorchScript archives
    (``torch.jit.save``); torch re-attaches each as a submodule, so
    ``state_dict()`` includes their buffers (e.g. the TensorProduct's
    ``_compiled_main_left_right._w3j_*``).  We read each archive's data.pkl
    with the same restricted unpickler (``__torch__.*`` classes become
    placeholders; the TorchScript code is never run) and take the
    parameter/buffer names from the ``__parameters__``/``__buffers__`` lines
    of its code files (parsed as literals)."""
    codegen = obj.__dict__["__codegen__"]
    modules = obj.__dict__.get("_modules")
    if not isinstance(modules, dict):
        raise CheckpointError(f"{obj.qualname}: __codegen__ state without _modules")
    for fname, blob in codegen.items():
        where = f"{parent.reader.path}: compiled submodule {fname!r} of {obj.qualname}"
        if not isinstance(fname, str) or not isinstance(blob, (bytes, bytearray)):
            raise CheckpointError(f"{where}: expected TorchScript bytes")
        try:
            zf = zipfile.ZipFile(io.BytesIO(blob))
        except _ZIP_ERRORS as e:
            raise CheckpointError(f"{where} is not a valid TorchScript archive ({e})") from e
        r = parent.reader
        reader = _ZipReader(where, zf, r.max_total - r.used, r.max_pickle, torchscript=True)
        classes = _script_classes(reader)
        u = _RestrictedUnpickler(io.BytesIO(reader.read(reader.pickle_name, r.max_pickle)),
                                 reader, parent.allow_prefixes, torchscript=True,
                                 max_objects=parent.max_objects)
        modules[fname] = _script_module(u.load(), classes, where)
        r.account(reader.used, f"the tensors of {where}")
        parent.seen |= u.seen
        parent.bf16 |= u.bf16
    obj.__dict__["__codegen__"] = list(codegen)  # as e3nn leaves it


_CLASS_LINE = re.compile(r"class (\w+)\((\w*)\):")
_TENSOR_LIST_LINE = re.compile(r"\s+__(parameters|buffers)__ = (\[[^\]]*\])\s*$")


def _script_classes(reader: "_ZipReader") -> dict[str, dict]:
    """TorchScript class name -> {"module": bool, "parameters": [...],
    "buffers": [...]} from ``code/__torch__/**.py`` (read as text only)."""
    classes: dict[str, dict] = {}
    code = reader.prefix + "code/"
    for name in reader.zf.namelist():
        if not (name.startswith(code) and name.endswith(".py")):
            continue
        module = name[len(code):-3].replace("/", ".")
        current = None
        for line in reader.read(name, reader.max_pickle).decode("utf-8", "replace").splitlines():
            if m := _CLASS_LINE.match(line):
                current = classes[f"{module}.{m[1]}"] = {
                    "module": m[2] == "Module", "parameters": [], "buffers": []}
            elif current is not None and (m := _TENSOR_LIST_LINE.match(line)):
                try:
                    current[m[1]] = [str(n) for n in ast.literal_eval(m[2])]
                except (ValueError, SyntaxError):
                    raise CheckpointError(f"{reader.path}: malformed line {line!r:.100}") from None
    return classes


def _script_module(obj, classes: dict, where: str, depth: int = 0):
    """Give a TorchScript module object the torch.nn.Module state layout."""
    info = classes.get(getattr(obj, "qualname", None))
    if not isinstance(obj, PickledObject) or info is None or not info["module"]:
        return obj
    if depth > MAX_MODULE_DEPTH:
        raise CheckpointError(f"{where}: modules nested too deeply")
    d = obj.__dict__
    layout = {"_parameters": OrderedDict(), "_buffers": OrderedDict(), "_modules": OrderedDict()}
    for k in list(d):
        if k in info["parameters"]:
            layout["_parameters"][k] = d.pop(k)
        elif k in info["buffers"]:
            layout["_buffers"][k] = d.pop(k)
        elif classes.get(getattr(d[k], "qualname", None), {}).get("module"):
            layout["_modules"][k] = _script_module(d.pop(k), classes, where, depth + 1)
    d.update(layout, _non_persistent_buffers_set=set())
    return obj


class _SinkClass(PickledClass):
    """Permissive scans only: a refused global whose calls return itself, so
    the scan gets past chains like ``getattr(__import__('os'), 'system')``."""

    def __call__(cls, *args, **kwargs):
        return cls


class _Refused(Exception):
    def __init__(self, qualname):
        self.qualname = qualname


def _is_dotted_name(q: str) -> bool:
    return all(part.isidentifier() for part in q.split("."))


def _is_int_tuple(x) -> bool:
    return isinstance(x, (tuple, list)) and all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in x)


# --------------------------------------------------------------------------
# the zip archive
# --------------------------------------------------------------------------

_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, struct.error,
               RuntimeError, NotImplementedError, ValueError)


class _ZipReader:
    def __init__(self, path: str, zf: zipfile.ZipFile, max_total_bytes: int,
                 max_pickle_bytes: int, torchscript: bool = False,
                 max_memory_bytes: int | None = None):
        self.path, self.zf = path, zf
        self.max_total, self.max_pickle = max_total_bytes, max_pickle_bytes
        self.used = 0  # bytes of tensors produced
        self.cache: dict[str, bytes] = {}
        infos = zf.infolist()
        stored = sum(i.file_size for i in infos if "/data/" in f"/{i.filename}")
        #: memory cap on tensors produced: views may copy a storage more than once, but
        #: not without bound (default: twice the stored tensor bytes + 256 MiB)
        self.max_memory = min(max_total_bytes, 2 * stored + AUTO_MEMORY_SLACK
                              if max_memory_bytes is None else max_memory_bytes)
        declared = sum(i.file_size for i in infos)
        if declared > max_total_bytes:
            raise CheckpointError(
                f"{path}: the archive declares {declared} bytes of content, over the "
                f"limit of {max_total_bytes} (raise max_total_bytes if this is genuine)")
        names = {i.filename for i in infos}
        pkls = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if "data.pkl" in names:
            pkls.append("data.pkl")
        tops = {n.split("/", 1)[0] for n in names if "/" in n}
        ts = [n for n in names if n.endswith("/constants.pkl") or "/code/" in n]
        if ts and not torchscript:
            raise CheckpointError(
                f"{path} is a TorchScript archive (torch.jit.save), which is not supported: "
                "it contains compiled code that only torch can run. Use the plain "
                "torch.save() file instead (for MACE, the .model file rather than "
                "*_compiled.model), or in PyTorch load it and re-save "
                "torch.save(model.state_dict(), 'weights.pt').")
        if len(pkls) != 1:
            why = "has no data.pkl record" if not pkls else f"has several data.pkl records {pkls}"
            raise CheckpointError(f"{path} is a zip file but not a torch.save checkpoint: it {why} "
                                  f"(top-level entries: {sorted(tops)[:5]})")
        self.pickle_name = pkls[0]
        self.prefix = pkls[0][: -len("data.pkl")]
        bo = self.prefix + "byteorder"
        self.byteorder = "<"
        if bo in names:
            mark = self.read(bo, 16)
            if mark not in (b"little", b"big"):
                raise CheckpointError(f"{path}: unknown byteorder record {mark!r:.40}")
            self.byteorder = "<" if mark == b"little" else ">"

    def account(self, nbytes: int, what: str):
        self.used += nbytes
        if self.used > self.max_total:
            raise CheckpointError(
                f"{self.path}: reading {what} exceeds the limit of {self.max_total} bytes "
                "(raise max_total_bytes if this is genuine)")
        if self.used > self.max_memory:
            raise CheckpointError(
                f"{self.path}: reading {what} exceeds the limit of {self.max_memory} bytes of "
                "tensor memory (the file stores far less tensor data than its tensors declare; "
                "pass max_memory_bytes=N if this is genuine and trusted)")

    def read(self, name: str, limit: int) -> bytes:
        try:
            info = self.zf.getinfo(name)
            if info.file_size > limit:
                raise CheckpointError(f"{self.path}: record {name} is {info.file_size} bytes, "
                                      f"over the limit of {limit}")
            with self.zf.open(info) as f:
                data = f.read(limit + 1)
        except CheckpointError:
            raise
        except KeyError:
            raise CheckpointError(f"{self.path}: record {name} is missing") from None
        except _ZIP_ERRORS as e:
            raise CheckpointError(f"{self.path}: record {name} is corrupt or truncated "
                                  f"({type(e).__name__}: {e}); re-download or re-save "
                                  "the checkpoint") from e
        if len(data) != info.file_size:
            raise CheckpointError(f"{self.path}: record {name} is truncated")
        return data

    def storage_bytes(self, st: _Storage) -> bytes:
        data = self.cache.get(st.key)
        if data is None:
            name = f"{self.prefix}data/{st.key}"
            nbytes = st.numel * (st.dtype._raw or st.dtype.numpy).itemsize
            if name not in self.zf.NameToInfo:
                raise CheckpointError(f"{self.path}: storage record {name} referenced by "
                                      "data.pkl is missing; the checkpoint is incomplete")
            data = self.read(name, self.max_total)
            if len(data) < nbytes:
                raise CheckpointError(
                    f"{self.path}: storage record {name} has {len(data)} bytes but data.pkl "
                    f"declares {st.numel} elements of torch.{st.dtype.name} ({nbytes} bytes)")
            self.cache[st.key] = data = data[:nbytes] if len(data) > nbytes else data
        return data


def _not_a_zip_reason(path: str) -> str:
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(b"\x80\x02\x8a\x0a"):  # pickle of torch's legacy magic number
        return ("it is in torch's legacy (pre-1.6, non-zip) serialization format, which "
                "jaxuft does not read; re-save it with a current PyTorch: "
                "torch.save(torch.load(path, weights_only=False), new_path)")
    if head.startswith(b"PK\x03\x04"):
        return ("it starts like a zip archive but its central directory is missing or "
                "damaged: the file is truncated or corrupt (interrupted download/copy?)")
    if len(head) == 0:
        return "it is empty"
    return "it is not a zip archive (torch.save writes zip files since PyTorch 1.6)"


def read_checkpoint(path: str | os.PathLike, *, max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
                    max_pickle_bytes: int = DEFAULT_MAX_PICKLE_BYTES,
                    allow_prefixes: Iterable[str] = (),
                    max_objects: int = DEFAULT_MAX_OBJECTS,
                    max_memory_bytes: int | None = None) -> Any:
    """Load the object tree of a ``torch.save`` file without torch or code execution.

    Tensors come back as numpy arrays; classes/objects/functions as
    :class:`PickledClass`/:class:`PickledObject`/:class:`PickledFunction`
    placeholders; containers as dict/OrderedDict/list/tuple/set.

    ``max_total_bytes`` caps the declared content of the zip and the total
    size of tensors produced; ``max_pickle_bytes`` caps ``data.pkl``;
    ``allow_prefixes`` adds package prefixes (e.g. ``"nequip."``) whose
    names become placeholders too.  ``max_objects`` caps the objects (and
    container items) unpickling may build; ``max_memory_bytes`` caps the
    memory of the tensors produced (default: twice the tensor bytes the file
    stores, plus 256 MiB), and a tensor that repeats stored elements (stride
    0) may not exceed 16 MiB.  Every limit fails in seconds with a
    :class:`CheckpointError` naming the file.

    Raises :class:`CheckpointError` for a missing/corrupt/unsupported file
    and :class:`UnsafeCheckpointError` if the pickle names a global outside
    the allowlist (nothing is executed in either case).
    """
    obj, unpickler = _load(os.fspath(path), max_total_bytes, max_pickle_bytes,
                           tuple(allow_prefixes), max_objects=max_objects,
                           max_memory=max_memory_bytes)
    if unpickler.bf16:
        warnings.warn(f"{os.fspath(path)}: bfloat16 tensors were widened (exactly) to float32",
                      stacklevel=2)
    return obj


def checkpoint_globals(path: str | os.PathLike, *, max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
                       max_pickle_bytes: int = DEFAULT_MAX_PICKLE_BYTES) -> list[str]:
    """Sorted dotted names of every global the checkpoint's pickle references,
    refused ones included (they are not raised here); nothing is executed."""
    _, unpickler = _load(os.fspath(path), max_total_bytes, max_pickle_bytes, (), True)
    return sorted(unpickler.seen)


def _load(path: str, max_total: int, max_pickle: int, allow_prefixes, permissive=False,
          max_objects: int = DEFAULT_MAX_OBJECTS, max_memory: int | None = None):
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such file" if not os.path.exists(path)
                              else f"{path} is not a file")
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise CheckpointError(f"{path} cannot be read as a torch checkpoint: "
                              f"{_not_a_zip_reason(path)}") from None
    except _ZIP_ERRORS as e:
        raise CheckpointError(f"{path}: cannot open zip archive ({type(e).__name__}: {e})") from e
    with zf:
        reader = _ZipReader(path, zf, max_total, max_pickle, max_memory_bytes=max_memory)
        pkl = reader.read(reader.pickle_name, max_pickle)
        return _unpickle(path, pkl, reader, allow_prefixes, permissive, max_objects)


def _unpickle(path, pkl: bytes, reader: _ZipReader, allow_prefixes, permissive=False,
              max_objects: int = DEFAULT_MAX_OBJECTS):
    u = _RestrictedUnpickler(io.BytesIO(pkl), reader, allow_prefixes, permissive,
                             max_objects=max_objects)
    try:
        return u.load(), u
    except _Refused as r:
        refused = [r.qualname]
        if not permissive:  # find every refused name (still executes nothing)
            reader.used = 0
            try:
                refused = _unpickle(path, pkl, reader, allow_prefixes, True,
                                    max_objects)[1].refused or refused
            except Exception:
                pass
        raise UnsafeCheckpointError(_unsafe_message(path, refused)) from None
    except CheckpointError as e:
        if str(e).startswith(path):
            raise
        raise type(e)(f"{path}: {e}") from None
    except RecursionError:
        raise CheckpointError(f"{path}: data.pkl nests too deeply") from None
    except Exception as e:
        raise CheckpointError(f"{path}: data.pkl is corrupt or uses unsupported pickle "
                              f"features ({type(e).__name__}: {e})") from e


def _unsafe_message(path, refused: list[str]) -> str:
    names = ", ".join(dict.fromkeys(refused))
    hints = sorted({h for q in refused for p, h in _REFUSED_HINTS.items() if q.startswith(p)})
    hint = f" ({'; '.join(hints)})" if hints else ""
    return (f"{path}: refusing to load: its pickle references {names}{hint}, which is not on "
            "jaxuft's allowlist of tensor, container and model-class names. Nothing was "
            "executed: jaxuft never imports or calls anything a checkpoint names. If you "
            "trust the file, load it in PyTorch and re-save only the weights "
            "(torch.save(model.state_dict(), 'weights.pt')); if it is a genuine model file "
            "from a supported package, please report these names to the jaxuft developers.")

