"""Child processes that die with the process that started them (Linux's parent-death signal).

A benchmark or test killed from outside (SIGKILL, an OOM kill, a CI timeout) runs no cleanup: the
redis-server and worker processes it started, each in a session of its own so that a Ctrl-C at the
terminal does not reach them, would run on (a stand-in worker once spun a core for 40 minutes).
`die_with_parent()` returns a `preexec_fn` that asks the kernel to SIGKILL the child when its parent
goes. The request survives `exec`, so it holds for redis-server and `python -m ...` alike.

Two caveats. The signal fires when the parent *thread* that forked the child exits, not the process:
start children from the main thread (or a thread that lives as long as they should). And
`preexec_fn` runs Python between fork and exec, which is unsafe with some libraries' threads; it
does only the two `prctl` calls here, with the C function looked up beforehand, in the parent.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Callable

PR_SET_PDEATHSIG = 1
PR_CAPBSET_DROP = 24
CAP_DAC_OVERRIDE = 1

# Looked up once in the parent: the child after fork should not load libraries.
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


def die_with_parent(drop_dac_override: bool = False) -> Callable[[], None]:
    """A `preexec_fn` for `subprocess.Popen`: the child is SIGKILLed when the thread that started it exits.

    `drop_dac_override`: a child of root loses the capability to write where file modes forbid it
    (dropped from its bounding set, so its `exec` does not grant it), as a non-root service user
    would; then a folder made read-only (`chmod 0555`) stops it. No effect when not root.
    """
    parent = os.getpid()
    drop = drop_dac_override and os.geteuid() == 0

    def preexec() -> None:
        if _prctl is None:  # not Linux: nothing to ask for; the caller's own cleanup is all there is
            return
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if drop and _prctl(PR_CAPBSET_DROP, CAP_DAC_OVERRIDE, 0, 0, 0) != 0:
            os._exit(126)  # the fault benchmark relies on it: better no child than a root one
        if os.getppid() != parent:  # the parent died between fork and prctl: the signal will never come
            os._exit(1)

    return preexec


def parent_death_supported() -> bool:
    """Whether `die_with_parent` does anything here (Linux)."""
    return _prctl is not None


@contextmanager
def terminate_as_exit() -> Iterator[None]:
    """Within the block, SIGTERM (a CI timeout, `kill`) raises SystemExit in the main thread, so the
    caller's `finally` blocks run: what they undo (a mount, a folder's mode) outlives the children.
    Outside the main thread, nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def leave(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    before = signal.signal(signal.SIGTERM, leave)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)
