"""Former home of the MD engine, kept so old imports work: the compiled segment is now
:mod:`jaxuft.md.segment` and the driver :mod:`jaxuft.md.simulation`."""

from .segment import (  # noqa: F401
    AXIS, REPLICA_EDGE_BUDGET, Diagnostics, Program, System, compiled_segment, executable, initial_state, segment_fn,
)
from .simulation import Safety, Simulation, maxwell_boltzmann, stop_reasons  # noqa: F401
