"""Units used by the MD engine: user-facing fs, K, bar; internal ASE units (eV, Å, amu).

Inside compiled code time is in ASE's unit (Å·sqrt(amu/eV) ≈ 10.18 fs), momenta in
amu·Å per ASE time unit (so they are interchangeable with ``Atoms.get_momenta()``),
energies in eV, pressures in eV/Å³ and temperatures as ``kT`` in eV.
"""

from __future__ import annotations

from ase import units as _u

#: one femtosecond in ASE time units
FS = float(_u.fs)
#: Boltzmann constant, eV/K
KB = float(_u.kB)
#: one bar in eV/Å³
BAR = float(_u.bar)
#: one GPa in eV/Å³
GPA = float(_u.GPa)


def fs_to_ase(t_fs):
    return t_fs * FS


def ase_to_fs(t):
    return t / FS


def kelvin_to_kt(t_k):
    return t_k * KB


def bar_to_ev_per_a3(p_bar):
    return p_bar * BAR
