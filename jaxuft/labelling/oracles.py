"""Labelling oracles: any ASE calculator, named (``emt``, ``morse``, ``xtb`` via tblite, ``vasp``...) or built by a user factory.

    oracle = OracleConfig(name="xtb", kwargs={"method": "GFN1-xTB"})
    calc = make_calculator(oracle)                     # a fresh ASE calculator
    label = compute_label(atoms, oracle)               # energy, forces[, stress] + timing (what a Dask worker runs)
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any, Optional

import numpy as np
from pydantic import ConfigDict, Field, field_validator, model_validator

from ..config import StrictModel, validate_config
from ..errors import JaxuftError

__all__ = [
    "LabellingError", "OracleConfig", "make_calculator", "compute_label", "XTB_METHODS", "as_oracle",
]

#: tblite's parametrisations (``kwargs={"method": ...}``)
XTB_METHODS = ("GFN1-xTB", "GFN2-xTB", "IPEA1-xTB")
_XTB_NAMES = ("xtb", "tblite")
_FACTORY_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
#: keyword arguments that change how a calculator talks, not what it computes: left out of the label key
_NOT_IN_KEY = {"xtb": {"verbosity"}}
#: built-in oracles whose ``default_parameters`` list every keyword they take
_STRICT_PARAMS = {"emt", "morse", "lj", "xtb"}


class LabellingError(JaxuftError, RuntimeError):
    """Labelling cannot go on (a bad oracle, too few successful labels, a store that does not match)."""


def _ase_names() -> list[str]:
    from ase.calculators.calculator import names

    return list(names)


class OracleConfig(StrictModel):
    """Which ASE calculator labels frames: ``name`` (ASE's calculator names or ``xtb``) or ``factory``, plus ``kwargs``.

    ``energy_reference`` identifies the oracle's energy zero (default: derived from the name and
    method, e.g. ``tblite:GFN1-xTB``). It is written into every label: an oracle's total energies
    are not on the foundation model's scale (GFN1-xTB gives about -11 086 eV for the paper's
    197-atom frame, DFT -1 148 eV), so fine-tuning on these labels must refit the per-element
    reference energies (E0s).
    """

    # frozen: the label key is a hash of these settings, and energy_reference is derived from them once
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Optional[str] = Field(None, description="an ASE calculator name (emt, morse, lj, vasp, gpaw, cp2k, ...) or 'xtb' (tblite)")
    factory: Optional[str] = Field(None, description="'package.module:function' returning an ASE calculator; called with **kwargs")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the calculator or factory (JSON values)")
    stress: Optional[bool] = Field(None, description="compute stress: None = when the frame is 3D-periodic and the calculator can")
    energy_reference: Optional[str] = Field(None, description="name of the oracle's energy zero (default derived from name/method)")

    @field_validator("name")
    @classmethod
    def _check_name(cls, v):
        if v is None:
            return v
        v = v.strip().lower()
        if v in _XTB_NAMES:
            return "xtb"
        known = _ase_names()
        if v not in known:
            raise ValueError("unknown oracle name; use 'xtb' (tblite), an ASE calculator name (emt, morse, lj, vasp, "
                             "gpaw, cp2k, ...: ase.calculators.calculator.names) or factory='module:function'")
        return v

    @field_validator("factory")
    @classmethod
    def _check_factory(cls, v):
        if v is not None and not _FACTORY_RE.match(v):
            raise ValueError("factory must look like 'package.module:function'")
        return v

    @field_validator("kwargs")
    @classmethod
    def _check_kwargs(cls, v):
        try:
            json.dumps(v, sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"kwargs must be plain JSON values (numbers, strings, lists, dicts): {exc}") from None
        return v

    @model_validator(mode="after")
    def _complete(self):
        if (self.name is None) == (self.factory is None):
            raise ValueError("give exactly one of name (e.g. 'emt', 'xtb') or factory ('module:function')")
        if self.name == "xtb":
            method = self.kwargs.get("method", "GFN2-xTB")
            if method not in XTB_METHODS:
                raise ValueError(f"kwargs.method {method!r} is not a tblite method; use one of {', '.join(XTB_METHODS)}")
            if "method" not in self.kwargs or "verbosity" not in self.kwargs:
                # explicit method (the key names it); tblite's default verbosity prints every SCF step
                object.__setattr__(self, "kwargs", {"method": method, "verbosity": 0, **self.kwargs})
        if self.energy_reference is None:
            object.__setattr__(self, "energy_reference", self._default_reference())
        return self

    def _default_reference(self) -> str:
        if self.factory is not None:
            return f"factory:{self.factory}"
        if self.name == "xtb":
            return f"tblite:{self.kwargs['method']}"
        return f"ase:{self.name}"

    @property
    def label(self) -> str:
        """A short human name: ``emt``, ``xtb GFN1-xTB``, ``factory mypkg.mod:make``."""
        if self.factory is not None:
            return f"factory {self.factory}"
        return f"xtb {self.kwargs['method']}" if self.name == "xtb" else self.name

    def settings(self) -> dict:
        """What the oracle computes with (everything that enters the label key)."""
        ignored = _NOT_IN_KEY.get(self.name or "", set())
        return {"name": self.name, "factory": self.factory, "stress": self.stress,
                "kwargs": {k: v for k, v in self.kwargs.items() if k not in ignored}}

    def __hash__(self) -> int:  # kwargs is a dict: hash the canonical settings instead
        return hash((self.settings_hash(), self.energy_reference))

    def settings_hash(self) -> str:
        text = json.dumps(self.settings(), sort_keys=True, separators=(",", ":"), allow_nan=False)
        return hashlib.sha256(text.encode()).hexdigest()


def as_oracle(oracle) -> OracleConfig:
    """An :class:`OracleConfig` from itself or a dict (``ConfigError`` naming the bad field)."""
    if isinstance(oracle, OracleConfig):
        return oracle
    if isinstance(oracle, dict):
        return validate_config(OracleConfig, oracle, source="oracle")
    raise LabellingError(f"oracle must be an OracleConfig or a dict, got {type(oracle).__name__}")


def _import_factory(spec: str):
    module_name, func_name = spec.split(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise LabellingError(f"oracle factory {spec!r}: cannot import module {module_name!r} ({type(exc).__name__}: {exc}); "
                             "make it importable (installed, or on PYTHONPATH for the client and every worker)") from None
    func = getattr(module, func_name, None)
    if not callable(func):
        raise LabellingError(f"oracle factory {spec!r}: module {module_name!r} has no function {func_name!r}")
    return func


def _check_kwargs_known(oracle: OracleConfig, cls) -> None:
    """Built-in oracles with a complete parameter list refuse misspelt kwargs (ASE would silently keep them)."""
    if oracle.name not in _STRICT_PARAMS:
        return
    allowed = set(getattr(cls, "default_parameters", {}) or {})
    unknown = sorted(set(oracle.kwargs) - allowed)
    if unknown:
        raise LabellingError(f"oracle {oracle.name!r}: bad kwargs {', '.join(unknown)} for {cls.__name__}; "
                             f"allowed: {', '.join(sorted(allowed))}")


def make_calculator(oracle):
    """A fresh ASE calculator for ``oracle`` (an :class:`OracleConfig` or dict)."""
    oracle = as_oracle(oracle)
    kwargs = dict(oracle.kwargs)
    if oracle.factory is not None:
        calc = _import_factory(oracle.factory)(**kwargs)
        if not (hasattr(calc, "get_potential_energy") or hasattr(calc, "get_property")):
            raise LabellingError(f"oracle factory {oracle.factory!r} returned {type(calc).__name__}, not an ASE calculator")
        return calc
    if oracle.name == "xtb":
        try:
            from tblite.ase import TBLite
        except ImportError:
            raise LabellingError("oracle 'xtb' needs tblite: pip install 'jaxuft[xtb]' (or pip install tblite)") from None
        _check_kwargs_known(oracle, TBLite)
        return TBLite(**kwargs)
    from ase.calculators.calculator import get_calculator_class

    try:
        cls = get_calculator_class(oracle.name)
    except ImportError as exc:
        raise LabellingError(f"oracle {oracle.name!r}: its ASE calculator cannot be imported ({exc}); install its package") from None
    _check_kwargs_known(oracle, cls)
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise LabellingError(f"oracle {oracle.name!r}: bad kwargs for {cls.__name__}: {exc}") from None


def _wants_stress(calc, atoms, stress: Optional[bool]) -> bool:
    if stress is not None:
        return stress
    if not bool(np.all(atoms.pbc)):
        return False
    implemented = getattr(calc, "implemented_properties", None)
    return implemented is None or "stress" in implemented


def _compute(atoms, oracle: OracleConfig) -> dict:
    from ase.calculators.calculator import PropertyNotImplementedError

    atoms = atoms.copy()
    calc = make_calculator(oracle)
    atoms.calc = calc
    t0 = time.perf_counter()
    energy = float(atoms.get_potential_energy())
    forces = np.asarray(atoms.get_forces(), dtype=np.float64)
    out: dict[str, Any] = {"energy": energy, "forces": forces, "stress": None, "free_energy": None}
    if _wants_stress(calc, atoms, oracle.stress):
        try:
            out["stress"] = np.asarray(atoms.get_stress(voigt=True), dtype=np.float64)
        except PropertyNotImplementedError:
            if oracle.stress:
                raise
    try:
        fe = calc.get_property("free_energy", atoms, allow_calculation=False)
        out["free_energy"] = None if fe is None else float(fe)
    except Exception:  # not every calculator knows free_energy
        pass
    out["seconds"] = time.perf_counter() - t0
    if not math.isfinite(energy):
        raise LabellingError(f"oracle {oracle.label} returned a non-finite energy ({energy})")
    if forces.shape != (len(atoms), 3) or not np.all(np.isfinite(forces)):
        raise LabellingError(f"oracle {oracle.label} returned forces of shape {forces.shape} with non-finite values"
                             if forces.shape == (len(atoms), 3) else
                             f"oracle {oracle.label} returned forces of shape {forces.shape}, expected ({len(atoms)}, 3)")
    if out["stress"] is not None and (out["stress"].shape != (6,) or not np.all(np.isfinite(out["stress"]))):
        raise LabellingError(f"oracle {oracle.label} returned a bad stress {out['stress']}")
    return out


def _atoms_to_json(atoms) -> dict:
    d = {"numbers": atoms.numbers.tolist(), "positions": atoms.positions.tolist(),
         "cell": np.asarray(atoms.cell).tolist(), "pbc": [bool(p) for p in atoms.pbc]}
    for name in ("initial_charges", "initial_magmoms"):
        if name in atoms.arrays:
            d[name] = atoms.arrays[name].tolist()
    info = {}
    for k, v in atoms.info.items():  # user factories may read info (plain values travel)
        try:
            json.dumps(v)
        except (TypeError, ValueError):
            continue
        info[k] = v
    d["info"] = info
    return d


def _atoms_from_json(d: dict):
    from ase import Atoms

    atoms = Atoms(numbers=d["numbers"], positions=d["positions"], cell=d["cell"], pbc=d["pbc"])
    for name in ("initial_charges", "initial_magmoms"):
        if name in d:
            atoms.arrays[name] = np.asarray(d[name])
    atoms.info.update(d.get("info", {}))
    return atoms


def _child_main() -> None:  # python -c "...; _child_main()" IN OUT  (JSON both ways: no pickles)
    from ..fileio import atomic_write_json

    src, dst = sys.argv[1], sys.argv[2]
    with open(src) as f:
        job = json.load(f)
    try:
        out = _compute(_atoms_from_json(job["atoms"]), as_oracle(job["oracle"]))
        result = {"status": "ok", "payload": {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in out.items()}}
    except BaseException as exc:  # reported to the parent, which retries or records it
        result = {"status": "error", "payload": f"{type(exc).__name__}: {exc}"}
    atomic_write_json(dst, result, durable=False)


def _compute_in_child(atoms, oracle: OracleConfig, timeout: float) -> dict:
    """Run one label in a child process killed (with its process group) after ``timeout`` seconds."""
    with tempfile.TemporaryDirectory(prefix="jaxuft-label-") as tmp:
        src, dst = os.path.join(tmp, "in.json"), os.path.join(tmp, "out.json")
        with open(src, "w") as f:
            json.dump({"atoms": _atoms_to_json(atoms), "oracle": oracle.model_dump(mode="json")}, f)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([p for p in sys.path if p] + [env.get("PYTHONPATH", "")])
        code = "from jaxuft.labelling.oracles import _child_main; _child_main()"
        proc = subprocess.Popen([sys.executable, "-c", code, src, dst], env=env, start_new_session=True,
                                stdin=subprocess.DEVNULL)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
            raise LabellingError(f"oracle {oracle.label} took longer than timeout={timeout:g} s") from None
        if not os.path.exists(dst):
            raise LabellingError(f"oracle {oracle.label}: the calculation process died (exit status {proc.returncode})")
        with open(dst) as f:
            result = json.load(f)
        if result["status"] != "ok":
            raise LabellingError(result["payload"])
        payload = result["payload"]
        for k in ("forces", "stress"):
            if payload.get(k) is not None:
                payload[k] = np.asarray(payload[k], dtype=np.float64)
        return payload


def compute_label(atoms, oracle, timeout: Optional[float] = None) -> dict:
    """Energy, forces (and stress) of ``atoms`` from a fresh oracle calculator, with timing and where it ran.

    A non-finite energy, force or stress raises :class:`LabellingError`. With ``timeout`` the
    calculation runs in a child process that is killed when it overruns.
    """
    oracle = as_oracle(oracle)
    started = time.time()
    if timeout is None:
        out = _compute(atoms, oracle)
    else:
        out = _compute_in_child(atoms, oracle, timeout)
    out["started_at"] = started
    out["worker"] = f"{socket.gethostname()}:{os.getpid()}"
    out["versions"] = describe_versions(oracle)
    return out


def describe_versions(oracle: OracleConfig) -> dict:
    """Versions of the packages that computed a label (ASE, and tblite for xtb)."""
    import ase

    out = {"ase": ase.__version__}
    if oracle.name == "xtb":
        try:
            from importlib.metadata import version

            out["tblite"] = version("tblite")
        except Exception:
            pass
    return out
