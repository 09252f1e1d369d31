"""Check a model (config + params) before anything is evaluated with it, on load and on convert.

The config is checked against its family's schema (:mod:`jaxuft.checkpoints.schema`);
the params against what the config implies: the module's own parameter tree
(traced abstractly with ``jax.eval_shape``: nothing is computed or compiled),
with the same names, shapes and kinds of dtype, all finite.  Errors name the
source and the field.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping

import numpy as np

from ..errors import CheckpointError
from .schema import validate_model_config

__all__ = ["validate_model", "check_params", "split_tree", "MAX_ABS_PARAM"]

#: no trained weight, E0 or scale comes near this; larger values mean corrupt or tampered weights
MAX_ABS_PARAM = 1e12


def split_tree(tree: Mapping[str, Any]) -> tuple[Mapping, Mapping | None]:
    """``{"params": ..., "constants": ...}`` or a bare params dict -> ``(params, constants)``."""
    if "params" in tree and set(tree) <= {"params", "constants"}:
        return tree["params"], tree.get("constants")
    return tree, None


def validate_model(config: Mapping[str, Any], tree: Mapping[str, Any], source: str = "model") -> None:
    """Schema-check ``config`` and check ``tree``'s params against it; raises :class:`CheckpointError`."""
    validate_model_config(dict(config), source)
    params, constants = split_tree(tree)
    check_params(config, params, constants, source)


def _flat(tree, prefix=""):
    if isinstance(tree, Mapping):
        for k, v in tree.items():
            yield from _flat(v, f"{prefix}{k}/")
    else:
        yield prefix[:-1], tree


_EXPECTED: dict[str, dict] = {}  # (config, constants) digest -> expected params (one trace per architecture)


def _expected(config: Mapping, constants: Mapping | None) -> dict[str, tuple[tuple[int, ...], str]]:
    import jax
    import jax.numpy as jnp

    from ..models import build_module

    h = hashlib.sha256(json.dumps(dict(config), sort_keys=True).encode())
    for k, v in sorted((constants or {}).items()):
        arr = np.ascontiguousarray(v)
        h.update(f"{k}{arr.shape}{arr.dtype.str}".encode())
        h.update(arr.tobytes())
    key = h.hexdigest()
    if key in _EXPECTED:
        return _EXPECTED[key]
    module = build_module(dict(config), dict(constants) if constants else None)
    n, e = 2, 2
    args = (jnp.zeros(n, jnp.int32), jnp.ones((e, 3), jnp.float32), jnp.zeros(e, jnp.int32),
            jnp.ones(e, jnp.int32), jnp.ones(n, bool), jnp.ones(e, bool))
    shapes = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), *args))["params"]
    if len(_EXPECTED) >= 16:
        _EXPECTED.clear()
    out = _EXPECTED[key] = {name: (tuple(x.shape), np.dtype(x.dtype).kind) for name, x in _flat(shapes)}
    return out


def check_params(config: Mapping[str, Any], params: Mapping[str, Any], constants: Mapping | None = None,
                 source: str = "model") -> None:
    """Params must be exactly the module's tree: same names, shapes, dtype kinds, finite values.

    ``constants`` go into the module as they do for evaluation (MACE's U matrices).
    The expected tree is traced once per architecture and process."""
    if not isinstance(params, Mapping):
        raise CheckpointError(f"{source}: params must be a nested dict of arrays, got {type(params).__name__}")
    got = dict(_flat(params))
    for name, value in got.items():
        arr = np.asarray(value)
        if arr.dtype.kind not in "biuf":
            raise CheckpointError(f"{source}: parameter {name} has dtype {arr.dtype}; expected a real number type")
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise CheckpointError(f"{source}: parameter {name} contains NaN or inf; the weights are corrupt")
        if arr.dtype.kind == "f" and arr.size and float(np.max(np.abs(arr))) > MAX_ABS_PARAM:
            raise CheckpointError(f"{source}: parameter {name} holds values up to {float(np.max(np.abs(arr))):.3g}, "
                                  f"beyond any trained model (limit {MAX_ABS_PARAM:g}); the weights are corrupt")
    try:
        expected = _expected(config, constants)
    except CheckpointError:
        raise
    except Exception as exc:  # the config passed the schema but the module cannot be built from it
        raise CheckpointError(f"{source}: the config does not describe a buildable model "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if extra:
            parts.append(f"unexpected {extra[:5]}{' ...' if len(extra) > 5 else ''}")
        raise CheckpointError(f"{source}: the params do not match the config: {'; '.join(parts)} "
                              "(a damaged or hand-edited model: re-convert it)")
    for name, (shape, kind) in expected.items():
        arr = np.asarray(got[name])
        if arr.shape != shape:
            raise CheckpointError(f"{source}: parameter {name} has shape {arr.shape}, but the config implies "
                                  f"{shape} (a damaged or hand-edited model: re-convert it)")
        if kind == "f" and arr.dtype.kind != "f":
            raise CheckpointError(f"{source}: parameter {name} has dtype {arr.dtype}; expected floating point")
