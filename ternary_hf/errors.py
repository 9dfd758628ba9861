"""The errors ternary-hf raises on purpose: bad input, missing resources, refused outputs.

Every expected failure derives from :class:`TernaryHfError`, so the CLI prints it once, without a
traceback, and exits non-zero, while anything else (a bug) keeps its traceback. Each subclass also
derives from the built-in exception callers already catch (``ValueError``, ``FileNotFoundError``, ...),
so ``except ValueError`` keeps working. Messages say what to do next.
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "ChecksumError",
    "InvalidInputError",
    "MissingDependencyError",
    "MissingInputError",
    "OutputExistsError",
    "RegistrationError",
    "ResourceUnavailableError",
    "TernaryHfError",
]


class TernaryHfError(Exception):
    """Base of every error ternary-hf raises on purpose (its message is meant for the user)."""


class InvalidInputError(TernaryHfError, ValueError):
    """An argument, a config, or the content of an input file is not what it must be."""


class CheckpointError(InvalidInputError):
    """A weights file is truncated or corrupt, lacks a tensor, or does not match the model it is loaded into."""


class MissingInputError(TernaryHfError, FileNotFoundError):
    """An input path (model folder, corpus, index) does not exist or lacks a required file."""


class OutputExistsError(TernaryHfError, FileExistsError):
    """An output path holds something ternary-hf did not write; it is refused rather than overwritten."""


class ResourceUnavailableError(TernaryHfError, RuntimeError):
    """A model or data set is neither cached nor obtainable (e.g. no registry access)."""


class RegistrationError(TernaryHfError, RuntimeError):
    """transformers already has the ``"ternary"`` quantization method from another library."""


class ChecksumError(TernaryHfError, RuntimeError):
    """A downloaded or cached file does not match its recorded checksum."""


class MissingDependencyError(TernaryHfError, ImportError):
    """An optional dependency is not installed; the message names the extra that brings it."""
