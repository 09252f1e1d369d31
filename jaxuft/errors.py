"""Exceptions raised by jaxuft. Every message says what is wrong and how to fix it."""


class JaxuftError(Exception):
    """Base class of all jaxuft errors."""


class CheckpointError(JaxuftError, ValueError):
    """A checkpoint or converted model cannot be read."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle references code outside the allowlist; nothing was executed."""


class UnknownElementError(JaxuftError, ValueError):
    """A structure contains elements the model was not trained on."""


class StructureError(JaxuftError, ValueError):
    """A structure cannot be evaluated (overlapping atoms, NaNs, degenerate cell...)."""
