"""``QResConfig``: the settings of a Q-residual fit (``jaxuft qres fit``) as a pydantic model, from which the CLI flags are derived.

    cfg = QResConfig(descriptor="soap", r_cut=5.0, n_max=8, l_max=6, n_components=5)
    desc = cfg.descriptor_for(frames)          # SOAP (species default: those in frames) or ModelDescriptor
    fit = cfg.fit(frames)                      # descriptors -> PCA -> training Q -> per-element limits
    cfg = load_config(QResConfig, "qres.yaml") # ConfigError: "qres.yaml: n_max: ..." one line per bad field

``add_config_arguments(parser)`` adds one ``--field-name`` flag per field (type,
choices, help and default from the field; booleans as ``--scale/--no-scale``);
:func:`config_from_args` merges model defaults < ``--config FILE`` < flags given.
"""

from __future__ import annotations

import argparse
import types
import typing
from typing import Annotated, Literal, Optional, Union

from pydantic import BeforeValidator, Field, ValidationError, field_validator

from ..config import StrictModel, read_config_file, validate_config

__all__ = ["QResConfig", "add_config_arguments", "config_from_args", "given_arguments", "load"]

_F = dict(allow_inf_nan=False)


def _n_components(value):
    """A positive integer (components kept) or a fraction in (0, 1) (explained variance to reach)."""
    msg = "must be a positive integer (components kept) or a fraction in (0, 1) (variance to explain)"
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ValueError(msg) from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(msg)
    if float(value).is_integer() and value >= 1:
        return int(value)
    if 0.0 < value < 1.0:
        return float(value)
    raise ValueError(msg)


NComponents = Annotated[Union[int, float], BeforeValidator(_n_components)]


class QResConfig(StrictModel):
    """Settings of a Q-residual fit: the per-atom descriptor, the PCA and the per-element limits."""

    descriptor: Literal["soap", "model"] = Field("soap", description="per-atom descriptor: SOAP or the model's own")
    model: Optional[str] = Field(None, description="model name or path for --descriptor model (default sevennet-0)")
    species: Optional[list[str]] = Field(None, description="SOAP species (default: the elements of the training data)")
    r_cut: float = Field(5.0, gt=1.0, le=20.0, description="SOAP cutoff in Å", **_F)
    n_max: int = Field(8, ge=1, le=20, description="SOAP radial basis size")
    l_max: int = Field(6, ge=0, le=20, description="SOAP maximum degree")
    sigma: float = Field(0.375, gt=0, le=5.0, description="SOAP Gaussian width in Å", **_F)
    periodic: bool = Field(True, description="SOAP sees periodic images (--no-periodic: ignore them)")
    n_components: NComponents = Field(5, description="int, or a float in (0,1) variance target")
    scale: bool = Field(False, description="standardise features before PCA")
    n_sigma: float = Field(2.0, gt=0, description="per-element limit = mean + n_sigma * std of training Q", **_F)
    dtype: Literal["float32", "float64"] = Field("float64", description="floating-point precision")

    @field_validator("species")
    @classmethod
    def _known_symbols(cls, v):
        if v is None:
            return v
        from ase.data import atomic_numbers

        bad = [s for s in v if s not in atomic_numbers or atomic_numbers[s] == 0]
        if bad:
            raise ValueError(f"unknown chemical symbol(s) {', '.join(map(repr, bad))}; use symbols such as H, O, Cl")
        if not v:
            raise ValueError("list at least one element, or leave species out to use those of the training data")
        return v

    # ---- what the workflow needs ------------------------------------------------
    def descriptor_for(self, frames=()):
        """The descriptor these settings describe (SOAP species default: the elements of ``frames``)."""
        from .descriptors import ModelDescriptor, soap_descriptor, species_of

        if self.descriptor == "soap":
            species = self.species or species_of(frames)
            return soap_descriptor(species, self.r_cut, self.n_max, self.l_max, self.sigma, self.periodic, self.dtype)
        return ModelDescriptor(self.model or "sevennet-0", dtype=self.dtype)

    def fit(self, frames, progress: bool = False, sources=(), descriptor=None):
        """Descriptors -> PCA -> training Q and per-element limits (:func:`~jaxuft.uq.analysis.fit_qres`)."""
        from .analysis import fit_qres

        frames = list(frames)
        desc = descriptor if descriptor is not None else self.descriptor_for(frames)
        fit = fit_qres(desc, frames, self.n_components, scale=self.scale, n_sigma=self.n_sigma, dtype=self.dtype,
                       progress=progress, sources=sources)
        fit.pca.metadata["qres_config"] = self.model_dump(mode="json")
        return fit


# ---- command-line flags derived from the model ---------------------------------------
def _base(annotation):
    """``(python type, choices, is_list)`` of a field annotation (Optional, Literal, list unwrapped)."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _base(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) > 1:  # e.g. int | float: parse as a number, validate as the field
            return _number, None, False
        return _base(args[0])
    if origin is Literal:
        choices = typing.get_args(annotation)
        return type(choices[0]), list(choices), False
    if origin is list:
        typ, choices, _ = _base(typing.get_args(annotation)[0])
        return typ, choices, True
    return annotation, None, False


def _number(text: str):
    v = float(text)
    return int(v) if v.is_integer() else v


def _field_type(model, name: str, parse, is_list: bool):
    """An argparse ``type``: parse the text, then validate it as the field (bad values exit at parse time)."""

    def convert(text: str):
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {parse.__name__} value: {text!r}") from None
        probe = model.model_construct()  # assignment is validated (StrictModel), so this checks one field
        try:
            setattr(probe, name, [value] if is_list else value)
        except ValidationError as exc:
            msg = exc.errors()[0]["msg"]
            raise argparse.ArgumentTypeError(msg[len("Value error, "):] if msg.startswith("Value error, ") else msg)
        return getattr(probe, name)[0] if is_list else getattr(probe, name)

    convert.__name__ = parse.__name__
    return convert


class _Given(argparse.Action):
    """Store a value and remember that the user gave the flag (``namespace._given``)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        _mark(namespace, self.dest)


class _GivenBool(argparse.BooleanOptionalAction):
    def __call__(self, parser, namespace, values, option_string=None):
        super().__call__(parser, namespace, values, option_string)
        _mark(namespace, self.dest)


def _mark(namespace, dest: str) -> None:
    given = set(getattr(namespace, "_given", ()))
    given.add(dest)
    namespace._given = given


def add_config_arguments(parser: argparse.ArgumentParser, model=QResConfig, exclude=()) -> None:
    """One ``--field-name`` flag per field of ``model`` (type, choices, help and default from the field)."""
    for name, info in model.model_fields.items():
        if name in exclude:
            continue
        flag = f"--{name.replace('_', '-')}"
        default = info.get_default(call_default_factory=True)
        help_ = f"{info.description or name} (default {default})" if default is not None else (info.description or name)
        typ, choices, is_list = _base(info.annotation)
        if typ is bool:
            parser.add_argument(flag, dest=name, action=_GivenBool, default=default, help=help_)
            continue
        parser.add_argument(flag, dest=name, action=_Given, type=_field_type(model, name, typ, is_list), choices=choices,
                            nargs="+" if is_list else None, default=default, help=help_,
                            metavar=name.upper() if choices is None else None)


def given_arguments(args: argparse.Namespace, model=QResConfig) -> dict:
    """The fields of ``model`` given on the command line."""
    given = getattr(args, "_given", set())
    return {name: getattr(args, name) for name in model.model_fields if name in given}


def config_from_args(args: argparse.Namespace, model=QResConfig, source: str = "qres settings"):
    """Model defaults < ``args.config`` (a YAML/TOML/JSON file) < the flags given; :class:`ConfigError` names each bad field."""
    base = {}
    path = getattr(args, "config", None)
    if path:
        base = read_config_file(path)
        validate_config(model, base, source=str(path))  # errors name the file's own fields first
    return validate_config(model, {**base, **given_arguments(args, model)}, source=source)


def load(path) -> QResConfig:
    """A :class:`QResConfig` from a YAML/TOML/JSON file."""
    return validate_config(QResConfig, read_config_file(path), source=str(path))

