"""Project exceptions.

Every error a user can cause raises :class:`HfPxError` (or a subclass) with a
message that says what to do. The CLI prints the message as one line and exits
with code 2; library callers can catch it.
"""

from __future__ import annotations


class HfPxError(Exception):
    """Bad input or configuration; the message names the fix."""

    exit_code = 2


class HfPxFailure(HfPxError):
    """Something outside the user's input failed (I/O, network, numerics)."""

    exit_code = 1
