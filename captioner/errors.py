"""The base of every error captioner reports to a person.

A leaf module: every room's own error (`ConfigError`, `FrameError`, `SubmitError`, ...) derives from
`CaptionerError`, so an entry point can tell "the input or setup is wrong, here is why" (print the
message, exit non-zero) from a bug (a traceback), without importing every room.
"""

from __future__ import annotations


class CaptionerError(Exception):
    """Something a person can fix: the message names the file, setting or value and the reason."""


class ConfigError(CaptionerError):
    """A run cannot start; the message says why. Nothing has been done yet."""
