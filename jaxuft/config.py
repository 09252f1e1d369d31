"""Shared base for jaxuft's pydantic v2 configs: unknown fields refused, one-line errors, YAML/TOML/JSON files.

    class MDConfig(StrictModel):
        timestep: PositiveFloat = 0.5
    cfg = load_config(MDConfig, "md.yaml")          # ConfigError: "md.yaml: timestep: ..."
    schema = MDConfig.model_json_schema()
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from .errors import JaxuftError

__all__ = ["StrictModel", "ConfigError", "format_validation_error", "read_config_file", "load_config", "validate_config"]


class ConfigError(JaxuftError, ValueError):
    """A configuration is invalid; the message names the field and what is allowed."""


class StrictModel(BaseModel):
    """Base of every config: unknown fields are errors, values are validated on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


M = TypeVar("M", bound=BaseModel)


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def format_validation_error(exc: ValidationError, source: str | None = None) -> str:
    """One line per problem: ``SOURCE: field.sub: message (got VALUE)``."""
    lines = []
    for err in exc.errors():
        where = _loc(tuple(err.get("loc", ())))
        msg = err.get("msg", "invalid")
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        if err.get("type") == "extra_forbidden":
            msg = "unknown field (check its spelling; `jaxuft config schema KIND` lists them: workflow, md, finetune, qres, oracle)"
        got = err.get("input")
        got_s = ""
        if err.get("type") != "missing" and not isinstance(got, (dict, list)):
            got_s = f" (got {got!r})"
        lines.append(f"{source + ': ' if source else ''}{where}: {msg}{got_s}")
    return "\n".join(lines)


def read_config_file(path: str | os.PathLike) -> dict:
    """A dict from a ``.yaml``/``.yml``, ``.toml`` or ``.json`` file (clear errors for anything else)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    suffix = path.suffix.lower()
    text = path.read_text()
    try:
        if suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        elif suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        elif suffix == ".json":
            data = json.loads(text)
        else:
            raise ConfigError(f"{path}: unknown config format {suffix!r}; use .yaml, .toml or .json")
    except ConfigError:
        raise
    except Exception as exc:  # parser errors of three libraries
        raise ConfigError(f"{path}: cannot parse: {str(exc).splitlines()[0]}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of field names to values")
    return data


def validate_config(model: type[M], data: Any, source: str | None = None) -> M:
    """``model.model_validate(data)`` with :class:`ConfigError` naming each bad field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def load_config(model: type[M], path: str | os.PathLike) -> M:
    return validate_config(model, read_config_file(path), source=str(path))
