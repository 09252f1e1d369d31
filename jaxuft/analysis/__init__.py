"""Analysis of trajectories and labelled frames: residuals, bond formation, density, RDFs, Q-residuals, reports.

Functions take ASE ``Atoms`` / arrays and return plain dicts of numbers and numpy arrays::

    from jaxuft.analysis import read_frames, read_thermo, thermo_energy_residuals, bond_formation
    frames = read_frames("chclca/eval/FT5.xyz")                    # extxyz, trajectory.npz, ...
    thermo = read_thermo("chclca/thermo/Periodic-FT5.tsv")          # LAMMPS-style table or log
    res = thermo_energy_residuals(frames, thermo)                   # mean / rmse in meV/atom
    hcl = bond_formation(read_frames("chclca/long/N-50.xyz"), "H", "Cl", cutoff=1.6)

Modules: ``io`` (readers), ``thermo`` (row matching, series stats), ``residuals``, ``bonds``,
``density``, ``rdf``, ``qres`` (descriptor cache, streamed PCA, per-element Q), ``plots``,
``report`` (markdown), ``paper`` (``jaxuft paper reproduce``), ``cli``.
"""

from .bonds import bond_formation, criterion_text, cutoff_scan, pair_distances
from .density import density_series, mass_density
from .io import read_frames, read_thermo
from .rdf import rdf, rdf_pairs
from .residuals import energy_residuals, force_residuals, frame_residuals, reference_energy, thermo_energy_residuals
from .thermo import match_rows, series_stats, thermo_time_ns

__all__ = [
    "bond_formation", "criterion_text", "cutoff_scan", "density_series", "energy_residuals", "force_residuals",
    "frame_residuals", "mass_density", "match_rows", "pair_distances", "rdf", "rdf_pairs", "read_frames",
    "read_thermo", "reference_energy", "series_stats", "thermo_energy_residuals", "thermo_time_ns",
]
