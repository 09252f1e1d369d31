"""``jaxuft bench``: a standard benchmark suite for whatever device JAX sees (MD, energy+forces, fine-tuning, SOAP + Q).

    from jaxuft.bench import BenchConfig, run_suite
    report = run_suite(BenchConfig(quick=True, out="bench.json"))   # also: jaxuft bench --quick

Modules: ``suite`` (settings, systems, the run and its JSON report), ``measure`` (the timed
measurements and peak memory), ``models`` (built-in models: a MACE-MP-0b-small-shaped MACE with
random weights, a tiny MACE), ``cg`` (MACE's U tensors without torch), ``cli``.
"""

from .suite import ITEMS, BenchConfig, BenchError, run_suite

__all__ = ["ITEMS", "BenchConfig", "BenchError", "run_suite"]
