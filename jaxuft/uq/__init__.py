"""Q-residual uncertainty: per-atom descriptors (SOAP in JAX or the model's own), PCA on device,
Q-residuals and Hotelling's T² with confidence limits, live monitoring inside MD, plots.

    from jaxuft.uq import SOAP, PCA, element_limits
    X = SOAP(species, r_cut=5.0, n_max=8, l_max=6, sigma=0.375, periodic=True).compute(frames)
    pca = PCA(n_components=5).fit(X)
    q = pca.q_residual(X_new)                      # (n_atoms,)
    limits = element_limits(pca.q_residual(X), numbers)   # paper: mean + 2 std per element

Modules: ``soap`` (SOAP), ``pca`` (PCA, pure functions), ``covariance`` (CovarianceAccumulator,
subspace iteration), ``config`` (QResConfig: the ``qres fit`` settings),
``limits`` (Jackson–Mudholkar, F, empirical), ``aggregate`` (per element / per frame),
``descriptors`` (ModelDescriptor, soap_descriptor), ``analysis`` (fit/score workflow),
``monitor`` (MD observables hook), ``plots``, ``cli`` (``jaxuft qres``).
"""

from .aggregate import per_element, per_structure, per_structure_element
from .config import QResConfig
from .descriptors import ModelDescriptor, from_settings, soap_descriptor, species_of
from .limits import ElementLimits, element_limits, q_limit, t2_limit
from .monitor import QResidualMonitor, build_monitor, monitor_observables, stop_on_flag
from .covariance import CovarianceAccumulator, CovarianceOperator
from .pca import PCA, PCAState, q_residual_fn, t2_fn, transform_fn
from .soap import SOAP, graph_descriptor_fn, real_solid_harmonics, soap_from_edges, soap_from_species_slots, species_slot_layout

__all__ = [
    "PCA",
    "SOAP",
    "CovarianceAccumulator",
    "CovarianceOperator",
    "ElementLimits",
    "ModelDescriptor",
    "PCAState",
    "QResConfig",
    "QResidualMonitor",
    "build_monitor",
    "element_limits",
    "from_settings",
    "graph_descriptor_fn",
    "monitor_observables",
    "per_element",
    "per_structure",
    "per_structure_element",
    "q_limit",
    "q_residual_fn",
    "real_solid_harmonics",
    "soap_descriptor",
    "soap_from_edges",
    "soap_from_species_slots",
    "species_slot_layout",
    "species_of",
    "stop_on_flag",
    "t2_fn",
    "t2_limit",
    "transform_fn",
]
