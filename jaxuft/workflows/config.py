"""The workflow configuration: one pydantic model (extra="forbid") for system, foundation, MD, oracle, fine-tuning and protocols.

A config file (YAML, TOML or JSON) is validated completely before any work starts; a wrong
field name or type is one line naming the field (``jaxuft config validate FILE``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, PositiveFloat, PositiveInt, field_validator, model_validator

from ..config import StrictModel
from ..finetune.config import FinetuneConfig
from ..labelling.oracles import OracleConfig

__all__ = [
    "StructureSpec", "BulkSpec", "FoundationSpec", "MDSettings", "LabellingSettings", "SelectionSettings",
    "NaiveSettings", "PeriodicSettings", "NonperiodicSettings", "EvaluationSettings", "ReportSettings",
    "WorkflowConfig", "PROTOCOLS",
]

PROTOCOLS = ("naive", "periodic", "nonperiodic")


class BulkSpec(StrictModel):
    """A crystal from ``ase.build.bulk`` (the toy systems), repeated and optionally rattled."""

    symbol: str = "Cu"
    crystalstructure: str | None = "fcc"
    a: PositiveFloat | None = 3.6
    cubic: bool = True
    repeat: tuple[PositiveInt, PositiveInt, PositiveInt] = (2, 2, 2)
    rattle: float = Field(0.0, ge=0.0, le=0.5, description="std of a Gaussian displacement, Å (seeded)")


class StructureSpec(StrictModel):
    """The starting structure: a file ASE reads (``file`` + ``index``) or a ``bulk`` crystal."""

    file: str | None = Field(None, description="structure file (relative paths: to the config file's folder)")
    index: int = 0
    bulk: BulkSpec | None = None

    @model_validator(mode="after")
    def _one_source(self):
        if (self.file is None) == (self.bulk is None):
            raise ValueError("give exactly one of 'file' or 'bulk'")
        return self


class FoundationSpec(StrictModel):
    model: str = Field("sevennet-0", description="model-zoo name, converted model directory, or 'morse' (built-in toy)")
    dtype: Literal["float32", "float64"] = "float32"


class MDSettings(StrictModel):
    """Dynamics shared by every protocol and the evaluation (units: fs, K, bar, 1/fs)."""

    ensemble: Literal["nve", "nvt-langevin", "nvt-nh", "npt"] = "nvt-langevin"
    timestep: PositiveFloat = 0.5
    temperature: PositiveFloat = 300.0
    pressure: float = 1.0
    friction: PositiveFloat = 0.01
    tau_t: PositiveFloat | None = None
    tau_p: PositiveFloat | None = None
    record_every: PositiveInt = 10
    chunk_steps: PositiveInt = 1000
    max_temperature: PositiveFloat | None = None
    min_distance: PositiveFloat | None = None


class LabellingSettings(StrictModel):
    """Where labels are computed: a local Dask cluster by default, or a user's scheduler."""

    oracle: OracleConfig = Field(default_factory=lambda: OracleConfig(name="emt"),
                                 description="{name: emt|morse|xtb|vasp|..., kwargs: {...}} or {factory: 'module:function', kwargs: {...}}")
    scheduler: str | None = Field(None, description="address of a running Dask scheduler (tcp://...); None: a LocalCluster")
    n_workers: int = Field(2, ge=0, description="LocalCluster workers (single-threaded); 0 runs in-process without Dask")
    retries: int = Field(2, ge=0)
    min_success: float = Field(0.5, gt=0.0, le=1.0, description="fraction of a stage's frames that must be labelled")


class SelectionSettings(StrictModel):
    """How frames are picked from a trajectory for labelling."""

    method: Literal["uniform", "qres"] = Field(
        "uniform", description="uniform in time over the window; qres: frames whose Q-residual exceeds the limit first")
    window: Literal["second-half", "all"] = "second-half"
    descriptor: Literal["model", "soap"] = "model"
    n_components: PositiveInt = 5


class NaiveSettings(StrictModel):
    """The paper's naive fine-tuning: R parallel foundation runs, N labelled frames, fine-tune once."""

    replicas: PositiveInt = 4
    steps: PositiveInt = 400
    n_labels: PositiveInt = 8
    selection: SelectionSettings = Field(default_factory=SelectionSettings)


class PeriodicSettings(StrictModel):
    """The paper's periodic fine-tuning: K rounds of (segment, label n frames, fine-tune on all labels)."""

    rounds: PositiveInt = 4
    steps: PositiveInt = 400
    labels_per_round: PositiveInt = 2
    selection: SelectionSettings = Field(default_factory=SelectionSettings)


class NonperiodicSettings(StrictModel):
    """The paper's control: one long foundation run, the first N frames (every ``label_every`` steps)."""

    n_labels: PositiveInt = 8
    label_every: PositiveInt = 100


class EvaluationSettings(StrictModel):
    """Each resulting model (and the foundation) from the same start: MD, label snapshots, residuals."""

    steps: PositiveInt = 400
    snapshots: PositiveInt = 4
    window: Literal["second-half", "all"] = "all"
    models: list[str] = Field(default_factory=lambda: ["foundation", "naive", "periodic", "nonperiodic"])


class ReportSettings(StrictModel):
    bonds: list[tuple[str, str, PositiveFloat]] = Field(
        default_factory=list, description="pairs to watch for bond formation: [[A, B, cutoff_Å], ...] (the paper: H, Cl)")
    qres_descriptor: Literal["model", "soap"] = "model"
    n_components: PositiveInt = 5


class WorkflowConfig(StrictModel):
    """Everything ``jaxuft run`` needs; every field has a default except the structure."""

    name: str = "run"
    seed: int = 0
    structure: StructureSpec
    foundation: FoundationSpec = Field(default_factory=FoundationSpec)
    md: MDSettings = Field(default_factory=MDSettings)
    labelling: LabellingSettings = Field(default_factory=LabellingSettings)
    finetune: FinetuneConfig = Field(default_factory=lambda: FinetuneConfig(e0s="lstsq"),
                                     description="per-round fine-tuning (jaxuft.finetune.FinetuneConfig); e0s default lstsq")
    protocols: list[Literal["naive", "periodic", "nonperiodic"]] = Field(default_factory=lambda: ["naive", "periodic"])
    naive: NaiveSettings = Field(default_factory=NaiveSettings)
    periodic: PeriodicSettings = Field(default_factory=PeriodicSettings)
    nonperiodic: NonperiodicSettings = Field(default_factory=NonperiodicSettings)
    evaluation: EvaluationSettings | None = Field(default_factory=EvaluationSettings)
    report: ReportSettings = Field(default_factory=ReportSettings)

    @field_validator("finetune", mode="before")
    @classmethod
    def _finetune_defaults(cls, v):
        """The oracle's energy zero is not the foundation's: E0s are refitted (lstsq) unless set."""
        if v is None:
            v = {}
        if isinstance(v, dict) and "e0s" not in v:
            v = {**v, "e0s": "lstsq"}
        return v

    @model_validator(mode="after")
    def _consistent(self):
        if not self.protocols:
            raise ValueError("protocols: name at least one of naive, periodic, nonperiodic")
        if len(set(self.protocols)) != len(self.protocols):
            raise ValueError("protocols: each protocol at most once")
        re = self.md.record_every
        for name, steps in (("naive.steps", self.naive.steps), ("periodic.steps", self.periodic.steps),
                            ("nonperiodic.label_every", self.nonperiodic.label_every)):
            if steps % re:
                raise ValueError(f"{name} ({steps}) must be a multiple of md.record_every ({re})")
        if self.evaluation is not None:
            if self.evaluation.steps % re:
                raise ValueError(f"evaluation.steps ({self.evaluation.steps}) must be a multiple of md.record_every ({re})")
            unknown = set(self.evaluation.models) - {"foundation", *PROTOCOLS}
            if unknown:
                raise ValueError(f"evaluation.models: unknown {sorted(unknown)}; use foundation, naive, periodic, nonperiodic")
        return self

    def finetune_config(self):
        """The per-round fine-tuning settings: jaxuft's fine-tuning defaults, E0s refitted to the oracle's
        labels (``e0s: lstsq``, since an oracle's energy zero is not the foundation's), progress bars only on
        a terminal unless ``finetune.progress`` is set; every field can be overridden under ``finetune:``."""
        from ..progress import progress_enabled

        if "progress" in self.finetune.model_fields_set:
            return self.finetune
        return self.finetune.model_copy(update={"progress": progress_enabled()})
