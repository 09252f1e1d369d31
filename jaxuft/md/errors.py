"""Errors raised by the MD engine (all are :class:`~jaxuft.errors.JaxuftError`)."""

from __future__ import annotations

from ..errors import JaxuftError


class MDInputError(JaxuftError, ValueError):
    """A simulation setting or starting structure is unusable; raised before anything compiles."""


class CapacityError(JaxuftError, RuntimeError):
    """Neighbour-list capacity could not be grown far enough (a structure is collapsing)."""
