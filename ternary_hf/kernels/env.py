"""The kernel's environment variables, read by one rule in one place.

Why: a variable read two ways (one caller accepting only ``"1"``, another any non-empty value) makes
``TERNARY_HF_DISABLE_KERNEL=true`` mean different things in different modules, and a mistyped value
silently means "off". Here an on/off variable accepts ``1/true/yes/on`` and ``0/false/no/off`` or an
empty value (any case, surrounding spaces ignored), a choice variable accepts its listed names, and
anything else is an :class:`~ternary_hf.errors.InvalidInputError` naming the variable and the values
it takes. Every ``TERNARY_HF_*`` kernel variable is read through :func:`env_flag`, :func:`env_choice` or
:func:`env_path`.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import InvalidInputError

__all__ = ["DISABLE_ENV", "VERBOSE_ENV", "CACHE_ENV", "ISA_ENV", "PARALLEL_ENV", "env_flag", "env_choice", "env_path"]

#: Force the reference torch path (on/off).
DISABLE_ENV = "TERNARY_HF_DISABLE_KERNEL"
#: Show the compiler output and repeat "waiting for the build lock" messages (on/off).
VERBOSE_ENV = "TERNARY_HF_KERNEL_VERBOSE"
#: Folder of compiled builds (a path).
CACHE_ENV = "TERNARY_HF_KERNEL_CACHE"
#: Which build runs: "auto" (the best this CPU runs), an ISA name, or "reference".
ISA_ENV = "TERNARY_HF_KERNEL_ISA"
#: How a call shares work between threads: "openmp" (default) or "helpers".
PARALLEL_ENV = "TERNARY_HF_KERNEL_PARALLEL"

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


def env_flag(name: str) -> bool:
    """The on/off variable ``name``: False when unset; see the module docstring for the values.

    Raises:
        InvalidInputError: for any other value.
    """
    raw = os.environ.get(name)
    if raw is None:
        return False
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise InvalidInputError(
        f"{name}={raw!r} is not an on/off value: set it to 1 (or true, yes, on) or 0 (or false, no, off), "
        f"or unset it"
    )


def env_choice(name: str, choices: tuple[str, ...], default: str) -> str:
    """The choice variable ``name`` in lower case, ``default`` when unset or empty.

    Raises:
        InvalidInputError: for a value that is not one of ``choices``.
    """
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return default
    if value not in choices:
        raise InvalidInputError(f"{name}={os.environ[name]!r} is not one of {', '.join(choices)}; "
                                f"set one of these or unset it")
    return value


def env_path(name: str) -> Path | None:
    """The path variable ``name`` (``~`` expanded), None when unset or empty."""
    value = os.environ.get(name, "").strip()
    return Path(value).expanduser() if value else None
