"""Progress-bar switches that leave the user's tqdm environment settings in charge.

tqdm reads ``TQDM_DISABLE`` (and other ``TQDM_*`` variables) only for arguments the caller did not
pass, so a bar created with ``disable=False`` would ignore a user's ``TQDM_DISABLE=1`` in CI logs.
Bars here pass ``disable`` only to switch them off.
"""

from __future__ import annotations

__all__ = ["bar_switch"]


def bar_switch(show: bool) -> dict[str, bool]:
    """tqdm keyword arguments for a bar that should be hidden when ``show`` is false.

    ``tqdm(..., **bar_switch(show))``: ``{"disable": True}`` to hide it, ``{}`` otherwise, so that
    ``TQDM_DISABLE`` still applies to a bar the code would show.
    """
    return {} if show else {"disable": True}
