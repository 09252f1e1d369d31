"""The paper's protocols as one resumable command: naive and periodic fine-tuning, the nonperiodic control, evaluation, report.

    from jaxuft.workflows import run_workflow
    results = run_workflow("examples/toy_protocols.yaml", "runs/toy")          # or a dict / WorkflowConfig
    results = run_workflow(None, "runs/toy", resume=True)                      # after a crash or kill -9

Modules: ``config`` (pydantic WorkflowConfig), ``runs`` (run directory, manifest, ledger),
``steps`` (MD / label / fine-tune stages), ``select`` (which frames are labelled),
``naive`` / ``periodic`` / ``evaluate`` (the protocols), ``results`` (tables), ``report`` (markdown + PNG),
``cli`` (``jaxuft run``, ``jaxuft report``, ``jaxuft config``).
"""

from .config import WorkflowConfig
from .run import load_workflow_config, run_workflow

__all__ = ["WorkflowConfig", "load_workflow_config", "run_workflow"]
