"""Errors of a potential on labelled frames: overall and per element.

Energy errors are per atom (meV/atom), force errors per component (meV/Å),
stress errors per component (meV/Å³).  ``energy_mean`` is the mean signed
residual (prediction - reference), the bias the paper tracks.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Sequence

import jax
import numpy as np
from ase.data import chemical_symbols

from .data import FixedBatches, ShapePlan, prepare, read_frames
from .loss import ErrorAccumulator, LossConfig, error_sums, loss_terms
from .params import ParamSplit
from .trunk import cached_predict


@functools.lru_cache(maxsize=64)
def _sums_fn(loss_cfg: LossConfig, n_species: int):
    def sums(pred, batch):
        terms = loss_terms(pred, batch, loss_cfg)
        return error_sums(pred, batch, n_species, terms["loss"])

    return jax.jit(sums)


@functools.lru_cache(maxsize=64)
def _cached_eval_fn(loss_cfg: LossConfig, n_species: int):
    def step(trainable, theta0, batch):
        pred = cached_predict(trainable, theta0, batch)
        terms = loss_terms(pred, batch, loss_cfg)
        return error_sums(pred, batch, n_species, terms["loss"]), pred

    return jax.jit(step)


def eval_step_fn(mode: tuple, loss_cfg: LossConfig, n_species: int, potential=None):
    """``(trainable, aux, batch) -> (error sums, predictions)``.

    mode ``("cache",)``: one jitted function on cached Jacobians (aux = theta0).
    mode ``("full", module, split)``: the potential's shared compiled ``efs`` on the merged
    params (aux = frozen leaves), so evaluation compiles nothing that labelling, MD or
    the ASE calculator have not compiled already; only the small error sums are jitted here.
    """
    if mode[0] == "cache":
        return _cached_eval_fn(loss_cfg, n_species)
    if potential is None:
        raise ValueError("eval_step_fn needs the potential for mode 'full'")
    split = mode[2]
    efs = potential.compiled("efs")
    sums = _sums_fn(loss_cfg, n_species)
    if mode[0] == "multihead":  # aux = (frozen, head): the head's params, then the shared compiled efs

        def mh_step(trainable, aux, batch):
            frozen, head = aux
            out = efs(split.merge(trainable, frozen, head), batch.graph)
            pred = {"energy": out["energy"], "forces": out["forces"], "stress": out["stress"]}
            return sums(pred, batch), pred

        return mh_step

    def step(trainable, frozen, batch):
        out = efs(split.merge(trainable, frozen), batch.graph)
        pred = {"energy": out["energy"], "forces": out["forces"], "stress": out["stress"]}
        return sums(pred, batch), pred

    return step


@dataclass
class EvalReport:
    """``overall``: metrics dict; ``per_element``: {symbol: force errors}; ``frames``: per-frame energies."""

    overall: dict
    per_element: dict
    frames: list = field(default_factory=list)
    name: str = ""

    def to_dict(self) -> dict:
        return {"name": self.name, "overall": self.overall, "per_element": self.per_element, "frames": self.frames}


def run_eval(step, trainable, frozen, batches: FixedBatches, atomic_numbers: Sequence[int], bar=None):
    """Accumulate error sums over fixed batches; per-frame energies (eV/atom) too (``bar.update`` per frame)."""
    acc = ErrorAccumulator()
    per_frame = []
    for idx, batch in batches:
        sums, pred = step(trainable, frozen, batch)
        if bar is not None:
            bar.update(len(idx))
        acc.add(sums)
        e = np.asarray(pred["energy"], dtype=np.float64)
        for j, i in enumerate(idx):
            s = batches.samples[i]
            per_frame.append(
                {
                    "source": s.source,
                    "n_atoms": s.n_nodes,
                    "energy_pred": float(e[j]),
                    "energy_ref": float(s.energy) if s.has_energy else None,
                }
            )
    per_el = {
        chemical_symbols[atomic_numbers[k]]: v for k, v in sorted(acc.per_species().items())
    }
    return acc.metrics(), per_el, per_frame


def evaluate(
    model,
    frames,
    *,
    params=None,
    batch_size: int = 4,
    dtype: str = "float32",
    energy_key: str | None = None,
    forces_key: str | None = None,
    stress_key: str | None = None,
    name: str = "",
    progress: bool | None = None,
    head: str | None = None,
    heads=None,
) -> EvalReport:
    """Evaluate ``model`` (a Potential, or anything :func:`jaxuft.load` takes) on labelled frames.

    ``frames``: path(s), ``Atoms`` or :class:`Frame` s; ``params`` overrides the model's.
    ``head``: score this head of a multihead fine-tune ("ft" or "foundation"); its leaves come
    from ``heads`` (``result.heads``, a heads file or a fine-tune's model/ or output folder),
    by default from the folder ``model`` was loaded from.
    ``progress``: a bar with rate and ETA (None: when stderr is a terminal or ``JAXUFT_PROGRESS=1``).
    """
    from ..progress import progress as _progress

    from ..potential import Potential

    pot = model if isinstance(model, Potential) else _load(model, dtype)
    if head is not None:
        from .multihead import HeadError, load_heads, with_head

        if heads is None and isinstance(model, Potential):
            raise HeadError(f"head={head!r}: pass heads= (result.heads or the fine-tune's folder) with a Potential")
        heads = load_heads(model if heads is None else heads) if not isinstance(heads, dict) else heads
        pot = with_head(pot, heads, head)
    frs = read_frames(frames, energy_key=energy_key, forces_key=forces_key, stress_key=stress_key, require=())
    if not any(f.energy is not None or f.forces is not None or f.stress is not None for f in frs):
        from .data import DataError

        raise DataError(f"{name or 'the frames'}: no energy, forces or stress labels to compare with")
    samples = prepare(frs, pot.species_map, pot.cutoff)
    plan = ShapePlan(batch_size).add(samples)
    batches = FixedBatches(samples, plan, pot.dtype)

    params = pot.params if params is None else params
    split = ParamSplit.create(params, ())
    step = eval_step_fn(("full", pot.module, split), LossConfig(), len(pot.atomic_numbers), pot)
    _, frozen = split.split(params)
    with _progress(total=len(samples), desc=f"evaluate {name}".strip(), unit="frame",
                   enabled=None if progress is None or progress else False, leave=False) as bar:
        overall, per_el, per_frame = run_eval(step, {}, frozen, batches, pot.atomic_numbers, bar=bar)
    return EvalReport(overall=overall, per_element=per_el, frames=per_frame, name=name)


def _load(model, dtype):
    from ..api import load

    return load(model, dtype=dtype)


def _fmt(x, digits=2):
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "-"
    return f"{x:.{digits}f}"


def format_report(report: EvalReport) -> str:
    """A plain-text table: overall energy/force/stress errors, then force errors per element."""
    o = report.overall
    lines = []
    title = f"{report.name}: " if report.name else ""
    lines.append(f"{title}{o.get('n_structures', 0)} structures")
    lines.append(
        f"{'':10s} {'E mean':>9s} {'E RMSE':>9s} {'E MAE':>9s} {'F RMSE':>9s} {'F MAE':>9s} {'S RMSE':>9s} {'S MAE':>9s}"
    )
    lines.append(
        f"{'':10s} {'meV/atom':>9s} {'meV/atom':>9s} {'meV/atom':>9s} {'meV/Å':>9s} {'meV/Å':>9s} {'meV/Å³':>9s} {'meV/Å³':>9s}"
    )
    lines.append(
        f"{'overall':10s} {_fmt(o.get('energy_mean')):>9s} {_fmt(o.get('energy_rmse')):>9s} {_fmt(o.get('energy_mae')):>9s} "
        f"{_fmt(o.get('forces_rmse'), 1):>9s} {_fmt(o.get('forces_mae'), 1):>9s} "
        f"{_fmt(o.get('stress_rmse'), 3):>9s} {_fmt(o.get('stress_mae'), 3):>9s}"
    )
    for sym, v in report.per_element.items():
        lines.append(
            f"{sym:10s} {'-':>9s} {'-':>9s} {'-':>9s} {_fmt(v['forces_rmse'], 1):>9s} {_fmt(v['forces_mae'], 1):>9s}"
            f" {'-':>9s} {'-':>9s}   ({v['n_atoms']} atoms)"
        )
    return "\n".join(lines)
