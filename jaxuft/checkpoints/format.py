"""The converted-model format: a directory ``DEST`` holding

* ``config.json`` -- indent-2 JSON: ``{"format": "jaxuft-model",
  "format_version": 1, "family": "mace", ...model config...,
  "metadata": {...}}``.  ``metadata`` always has ``jaxuft_version`` and
  ``created`` (UTC ISO date); converters add ``source`` (file name) and
  ``source_sha256``, etc.
* ``params.safetensors`` -- the parameter pytree flattened to
  ``"a/b/c"`` keys (nested dict keys joined by ``/``), numpy arrays.

``config.json`` also holds a sha256 ``manifest``: the hash of
``params.safetensors`` and of the config itself (canonical JSON of every other
key).  :func:`load_model` checks both (``verify=False`` skips it); a model
written before manifests existed loads as "unverified" with a one-line log.

:func:`save_model` writes atomically (temp dir beside ``DEST``, fsync,
rename); :func:`load_model` validates and returns ``(config, params)`` where
``config`` no longer has the bookkeeping keys ``format``,
``format_version``, ``manifest`` and ``metadata`` (see :func:`load_metadata`), so
``load_model(save_model(d, c, p))`` gives back ``c`` and ``p`` (JSON turns
tuples into lists).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from typing import Any, Mapping

import numpy as np

from jaxuft.errors import CheckpointError

__all__ = ["FORMAT", "FORMAT_VERSION", "CONFIG_FILE", "PARAMS_FILE", "save_model",
           "load_model", "load_metadata", "is_converted_model", "sha256_file",
           "flatten_params", "unflatten_params", "verify_manifest"]

FORMAT = "jaxuft-model"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
PARAMS_FILE = "params.safetensors"
_RESERVED = ("format", "format_version", "metadata", "manifest")
MANIFEST = "manifest"
SEP = "/"


def _jaxuft_version() -> str:
    try:
        from importlib.metadata import version

        return version("jaxuft")
    except Exception:
        try:
            import jaxuft

            return str(getattr(jaxuft, "__version__", "unknown"))
        except Exception:
            return "unknown"


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's contents."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    """``{"a": {"b": x}}`` -> ``{"a/b": np.asarray(x)}``; checks names and values."""
    if not isinstance(params, Mapping):
        raise TypeError(f"params must be a nested dict of arrays, got {type(params).__name__}")
    if not params and prefix:
        raise ValueError(f"params: empty dict at {prefix[:-1]!r} (it could not be restored)")
    flat: dict[str, np.ndarray] = {}
    for key, value in params.items():
        if not isinstance(key, str) or not key or SEP in key:
            raise ValueError(f"params: key {key!r} under {prefix or '/'!r} must be a "
                             f"non-empty str without {SEP!r}")
        name = prefix + key
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, name + SEP))
            continue
        arr = np.asarray(value)
        if arr.dtype.kind not in "biufc":
            raise TypeError(f"params: {name} has unsupported dtype {arr.dtype} (use bool, "
                            "int, uint, float16/32/64 or complex; cast bfloat16 to float32)")
        if arr.dtype.kind in "fc" and not np.isfinite(arr).all():
            raise ValueError(f"params: {name} contains NaN or inf")
        flat[name] = np.asarray(arr, order="C")  # (ascontiguousarray would make 0-d 1-d)
    return flat


def unflatten_params(flat: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Inverse of :func:`flatten_params`."""
    out: dict[str, Any] = {}
    for name in sorted(flat):
        *path, leaf = name.split(SEP)
        node = out
        for part in path:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise CheckpointError(f"parameter names clash at {name!r}")
        if not leaf or leaf in node:
            raise CheckpointError(f"parameter names clash at {name!r}")
        node[leaf] = flat[name]
    return out


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_model(dest: str | os.PathLike, config: Mapping[str, Any], params: Mapping[str, Any], *,
               metadata: Mapping[str, Any] | None = None, overwrite: bool = False) -> str:
    """Write a converted model directory at ``dest``; returns its path.

    ``config`` must be JSON-serialisable, have a str ``family`` and none of
    the reserved keys ``format``/``format_version``/``metadata``.  ``params``
    is a nested dict of arrays (numpy or jax; finite; numeric dtypes).
    ``metadata`` (JSON values) is stored under ``config.json["metadata"]``.

    Atomic: everything is written into a temporary directory next to
    ``dest``, fsynced, then renamed; on failure nothing is left behind.  An
    existing ``dest`` is refused (FileExistsError) unless ``overwrite=True``,
    and even then only an existing jaxuft model or an empty directory is
    replaced.
    """
    from safetensors.numpy import save_file

    dest = os.path.abspath(os.fspath(dest))
    if not isinstance(config, Mapping):
        raise TypeError("config must be a dict")
    bad = [k for k in _RESERVED if k in config]
    if bad:
        raise ValueError(f"config must not contain the reserved keys {bad}")
    if not isinstance(config.get("family"), str) or not config["family"]:
        raise ValueError("config must have a non-empty str 'family' (e.g. 'mace')")
    _check_json_keys(config, "config")
    _check_json_keys(metadata or {}, "metadata")
    meta = {"jaxuft_version": _jaxuft_version(),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    meta.update(metadata or {})
    doc = {"format": FORMAT, "format_version": FORMAT_VERSION, **config, "metadata": meta}
    try:
        text = json.dumps(doc, indent=2, allow_nan=False, sort_keys=False) + "\n"
    except (TypeError, ValueError) as e:
        raise ValueError(f"config/metadata must contain only JSON values: {e}") from e
    flat = flatten_params(params)
    _check_dest(dest, overwrite)

    parent, name = os.path.split(dest)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=parent)
    old = None  # where an overwritten model waits until the new one is in place
    committed = False
    try:
        params_path = os.path.join(tmp, PARAMS_FILE)
        save_file(flat, params_path, metadata={"format": FORMAT})
        _fsync(params_path)
        doc[MANIFEST] = {"algorithm": "sha256", "config": _config_digest(doc),
                         PARAMS_FILE: sha256_file(params_path)}
        text = json.dumps(doc, indent=2, allow_nan=False, sort_keys=False) + "\n"
        with open(os.path.join(tmp, CONFIG_FILE), "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        _fsync(tmp)
        _check_dest(dest, overwrite)
        if os.path.lexists(dest):  # overwrite: move the old one aside first
            old = tempfile.mkdtemp(prefix=f".{name}.old-", dir=parent)
            os.rename(dest, os.path.join(old, name))
        try:
            os.rename(tmp, dest)
            committed = True
        except BaseException:
            if old is not None:  # put the old model back
                os.rename(os.path.join(old, name), dest)
                os.rmdir(old)
                old = None
            raise
        _fsync(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if old is not None and committed:  # (if not, the old model stays in `old`)
            shutil.rmtree(old, ignore_errors=True)
    return dest


def _config_digest(doc: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of a config document without its manifest."""
    body = {k: v for k, v in doc.items() if k != MANIFEST}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))  # (a hand edit may add NaN)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def verify_manifest(path: str | os.PathLike, doc: Mapping[str, Any] | None = None) -> bool:
    """Check a model directory against the sha256 manifest in its ``config.json``.

    True when verified; False (with a one-line log) for a model saved before
    manifests existed; :class:`CheckpointError` naming the file on a mismatch."""
    path = os.fspath(path)
    cfg_path = os.path.join(path, CONFIG_FILE)
    doc = _read_config(path) if doc is None else doc
    man = doc.get(MANIFEST)
    if man is None:
        from jaxuft.progress import get_logger

        get_logger(__name__).info("%s: no sha256 manifest (saved by an older jaxuft); loading it unverified",
                                  path)
        return False
    fix = ("re-convert the model (jaxuft convert SRC DEST --overwrite, or jaxuft fetch NAME --force for "
           "a named model), or skip the check with --no-verify / verify=False if you edited it on purpose")
    if not (isinstance(man, dict) and man.get("algorithm") == "sha256"
            and isinstance(man.get("config"), str) and isinstance(man.get(PARAMS_FILE), str)):
        raise CheckpointError(f"{cfg_path}: manifest: malformed sha256 manifest; {fix}")
    if _config_digest(doc) != man["config"]:
        raise CheckpointError(f"{cfg_path} was modified after it was saved (its sha256 does not match "
                              f"the manifest); {fix}")
    params_path = os.path.join(path, PARAMS_FILE)
    if sha256_file(params_path) != man[PARAMS_FILE]:
        raise CheckpointError(f"{params_path} is corrupt or truncated, or was modified after it was saved "
                              f"(its sha256 does not match the manifest in {CONFIG_FILE}); {fix}")
    return True


def _check_json_keys(obj: Any, where: str) -> None:
    """json.dumps would silently turn non-str keys into strings: refuse them."""
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            if not isinstance(k, str):
                raise ValueError(f"{where}: key {k!r} is not a str (JSON keys must be)")
            _check_json_keys(v, f"{where}.{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_json_keys(v, f"{where}[{i}]")


def _check_dest(dest: str, overwrite: bool) -> None:
    if not os.path.lexists(dest):
        return
    if not overwrite:
        raise FileExistsError(f"{dest} already exists (pass overwrite=True to replace it)")
    if os.path.isdir(dest) and not os.path.islink(dest) and (
            is_converted_model(dest) or not os.listdir(dest)):
        return
    raise FileExistsError(f"{dest} exists and is not a jaxuft model directory; "
                          "refusing to replace it")


def _read_config(path: str) -> dict[str, Any]:
    if os.path.isfile(path):
        if zipfile.is_zipfile(path):
            raise CheckpointError(
                f"{path} looks like a PyTorch checkpoint, not a converted jaxuft model; "
                f"convert it first: jaxuft convert {path} DEST")
        raise CheckpointError(f"{path} is a file; a jaxuft model is a directory holding "
                              f"{CONFIG_FILE} and {PARAMS_FILE}")
    if not os.path.isdir(path):
        raise CheckpointError(f"{path}: no such model directory")
    cfg_path = os.path.join(path, CONFIG_FILE)
    try:
        with open(cfg_path, encoding="utf-8") as f:
            doc = json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{path} is not a jaxuft model: {CONFIG_FILE} is missing") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{cfg_path} is corrupt (not valid JSON: {e})") from e
    found = doc.get("format") if isinstance(doc, dict) else None
    if found != FORMAT:
        raise CheckpointError(f"{cfg_path} is not a jaxuft model config "
                              f"(format is {found!r}, expected {FORMAT!r})")
    version = doc.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{cfg_path}: invalid format_version {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path} uses model format version {version}; this jaxuft reads "
                              f"up to {FORMAT_VERSION}: upgrade jaxuft")
    return doc


def load_model(path: str | os.PathLike, *, verify: bool = True) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a converted model directory: ``(config, params)``, params as a
    nested dict of numpy arrays.  Raises :class:`CheckpointError` for a
    missing/corrupt/unsupported model, non-finite parameters, or (unless
    ``verify=False``) files that do not match the sha256 manifest."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = os.fspath(path)
    doc = _read_config(path)
    params_path = os.path.join(path, PARAMS_FILE)
    if not os.path.isfile(params_path):
        raise CheckpointError(f"{path} is incomplete: {PARAMS_FILE} is missing")
    try:
        flat = load_file(params_path)
    except (SafetensorError, OSError, ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"{params_path} is corrupt or truncated ({e}); "
                              "re-convert the model") from e
    for name, arr in flat.items():
        if arr.dtype.kind in "fc" and not np.isfinite(arr).all():
            raise CheckpointError(f"{params_path}: parameter {name} contains NaN or inf")
    if verify:
        verify_manifest(path, doc)
    config = {k: v for k, v in doc.items() if k not in _RESERVED}
    return config, unflatten_params(flat)


def load_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The ``metadata`` dict of a converted model (source, sha256, versions...)."""
    return dict(_read_config(os.fspath(path)).get("metadata") or {})


def is_converted_model(path: str | os.PathLike) -> bool:
    """True if ``path`` is a directory whose config.json says it is a jaxuft model."""
    try:
        with open(os.path.join(os.fspath(path), CONFIG_FILE), encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(doc, dict) and doc.get("format") == FORMAT
