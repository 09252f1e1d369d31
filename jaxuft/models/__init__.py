"""Model families. Each is a Flax module built from a JSON config.

A family module's ``__call__(species, vectors, senders, receivers, node_mask, edge_mask)``
returns ``{"node_energy": (n_nodes,), "descriptors": (n_nodes, n_features)}``
(eV and unitless features); the :class:`~jaxuft.potential.Potential` turns that
into energies, forces and stresses.
"""

from __future__ import annotations

import importlib

#: family name -> "module:builder" (imported lazily so one family's deps never load another's)
FAMILIES = {
    "mace": "jaxuft.models.mace:build",
    "nequip": "jaxuft.models.nequip:build",
    "pair": "jaxuft.models.pair:build",
}


def build_module(config: dict, constants: dict | None = None):
    family = config.get("family")
    if family not in FAMILIES:
        raise ValueError(
            f"unknown model family {family!r} in config; known families: {sorted(FAMILIES)}"
        )
    mod_name, fn = FAMILIES[family].split(":")
    builder = getattr(importlib.import_module(mod_name), fn)
    return builder(config, constants) if constants else builder(config)


def restrict_species(module, species):
    """``module`` specialised to the model species indices ``species`` when its family supports it
    (MACE: species-indexed weights taken for those species only; see ``MACE.present_species``), else ``module``.

    The result is a different (hashable) module, so programs compiled for it are distinct; a node of a
    species outside the set gets a NaN energy."""
    if "present_species" not in getattr(module, "__dataclass_fields__", {}):
        return module
    from .mace import restrict_species as mace_restrict

    return mace_restrict(module, species)


def forward_mode(module):
    """``module`` in a form ``jax.jvp`` can differentiate (forward-over-reverse Jacobians, e.g. the
    fine-tuning trunk cache). MACE's chunked message sum has a hand-written reverse-mode rule
    (``MACE.message_vjp``), which JAX cannot push tangents through; this clone uses the plain
    autodiff path instead (same values). Other families are returned as they are."""
    if not getattr(module, "message_vjp", False):
        return module
    return module.clone(message_vjp=False)
