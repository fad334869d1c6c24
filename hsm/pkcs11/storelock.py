"""One lock, across the processes of a machine, around the calls that read or write a token's
own record: loading and initializing a module, listing its tokens, logging in.

Why (measured on SoftHSM 2.6.1, read in its sources): every ``C_Login``, successful or not,
rewrites the token's ``token.object`` file (the PIN-count flags), and SoftHSM writes it in a
way another process can see half-done: under an ``fcntl`` lock it truncates the file, writes
the new content into a stdio buffer and *unlocks*; the bytes reach the file only when the
stream is closed afterwards. A process reading the file in that window (``C_Initialize``
scans every token directory; ``C_GetTokenInfo`` and ``C_Login`` re-read it when it changed)
finds it empty: at ``C_Initialize`` the token is skipped ("tokens present: none"), later
``C_GetTokenInfo``/``C_Login`` answer ``CKR_GENERAL_ERROR``. Eight processes opening one
token at once failed that way in about one open out of eight.

Holding this lock around those calls means no process of ours reads while another of ours
writes. It is an ``flock`` on the module file itself (every process that loads the module
can open it for reading, whoever runs it), so processes using the same module path share
it; a process loading the same token through another path (another copy of the module)
does not. Programs other than ``hsm`` that log in to the token (``softhsm2-util``,
``pkcs11-tool``) take no part, so the race remains with them. Within a process the lock is
re-entrant and also serializes threads. The lock is taken only on these slow paths, never
around data-key calls.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from types import TracebackType

__all__ = ["StoreLock"]

log = logging.getLogger(__name__)


class StoreLock:
    """A re-entrant lock shared by every thread and every process that uses ``path``."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.RLock()
        self._depth = 0
        self._fd = -1
        self._warned = False

    def __enter__(self) -> None:
        self._lock.acquire()
        if self._depth == 0:
            self._fd = self._flock()
        self._depth += 1

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._depth -= 1
        if self._depth == 0 and self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)  # closing the descriptor drops the flock
        self._lock.release()

    def _flock(self) -> int:
        # A fresh descriptor every time: a descriptor inherited across fork would share its
        # lock with the parent (flock belongs to the open file description).
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            self._warn(exc)
            return -1
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            os.close(fd)
            self._warn(exc)
            return -1
        return fd

    def _warn(self, exc: OSError) -> None:
        if not self._warned:
            self._warned = True
            log.warning("can't lock %s (%s); processes opening its tokens at the same moment "
                        "may see them half-written", self.path, exc.strerror)

    def __repr__(self) -> str:
        return f"StoreLock({self.path!r})"
