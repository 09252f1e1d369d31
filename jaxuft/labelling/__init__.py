"""Labelling oracles (any ASE calculator; EMT, Morse and tblite xTB built in) run on Dask, with a resumable label store.

    from jaxuft.labelling import OracleConfig, label_frames
    res = label_frames(frames, OracleConfig(name="xtb", kwargs={"method": "GFN1-xTB"}), "run/labels")
"""

from .oracles import XTB_METHODS, LabellingError, OracleConfig, as_oracle, compute_label, make_calculator
from .store import LabelStore, label_key, structure_hash
from .submit import LabelResult, label_frames

__all__ = [
    "LabelResult", "LabelStore", "LabellingError", "OracleConfig", "XTB_METHODS", "as_oracle", "compute_label",
    "label_frames", "label_key", "make_calculator", "structure_hash",
]
