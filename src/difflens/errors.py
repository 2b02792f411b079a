"""Exceptions raised by difflens. Every message says what went wrong and what to do."""
from __future__ import annotations


class DifflensError(Exception):
    """Base class for all user-facing difflens errors."""


class ConfigError(DifflensError):
    """A configuration file or option is invalid."""


class ModelSourceError(DifflensError):
    """A model could not be located or loaded."""


class IncompatiblePairError(DifflensError):
    """Base and finetuned models cannot be compared."""


class UnsupportedArchitectureError(DifflensError):
    """The model family is not known to difflens.arch."""


class DataError(DifflensError):
    """A dataset is missing, corrupt or has too few usable samples."""


class RunDirError(DifflensError):
    """A run directory is missing, corrupt or belongs to a different run."""


class LLMError(DifflensError):
    """An LLM endpoint failed, was unreachable or replied unparseably."""
