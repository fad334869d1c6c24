"""Loading a PKCS#11 module: environment, OS locking, re-initialization, fork safety.

One :class:`Module` per shared object per process (python-pkcs11 caches one library per
path; the same file reached by another path fails). Modules are shared and counted through
:meth:`Module.acquire` / :meth:`Module.release`.

Every call into the module runs between :meth:`Module.enter` and :meth:`Module.exit`, which
count calls in flight, so that :meth:`Module.reinitialize` never finalizes under a thread
that is mid-call. Each re-initialize bumps :attr:`Module.generation`: sessions and key
objects made in an older generation are never used again (SoftHSM reuses handle numbers).
Loading, listing tokens and logging in also hold :attr:`Module.store_lock`, shared with the
other processes using the module (:mod:`hsm.pkcs11.storelock`); what a failed load means is
:mod:`hsm.pkcs11.loading`.

Longer than this package's ~400-line rule on purpose: loading, the calls-in-flight count,
re-initializing, quiescing and the fork check share the module's lock, its generation and its
``ready`` flag, so they stay in one class.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pkcs11
import pkcs11.exceptions as p11e

from hsm.errors import HSMUnavailable, ModuleLoadError, Reason, TokenNotFound
from hsm.pkcs11 import native
from hsm.pkcs11.loading import check_loadable, init_error, load_error, named
from hsm.pkcs11.oslocking import OSLockingError, enable_os_locking, finalize_module
from hsm.pkcs11.storelock import StoreLock
from hsm.pkcs11.translate import translate_error, translated

__all__ = ["Module", "TokenSelector"]

log = logging.getLogger(__name__)

# Guards os.environ and every C_Initialize in the process: SoftHSM reads SOFTHSM2_CONF at
# C_Initialize, so with several instances the variable must be right at that moment.
_loader_lock = threading.Lock()
_registry: dict[tuple[int, int], Module] = {}
_fork_epoch = 0  # bumped in a forked child: every module then re-initializes before use
_NO_TOKEN = frozenset({Reason.TOKEN_NOT_PRESENT, Reason.TOKEN_NOT_RECOGNISED})


@dataclass(frozen=True)
class TokenSelector:
    """A token chosen by label or by serial, never by slot number."""

    label: str | None = None
    serial: str | None = None

    def __post_init__(self) -> None:
        if (self.label is None) == (self.serial is None):
            raise ValueError("a token is chosen by exactly one of label or serial")

    def matches(self, label: str, serial: str) -> bool:
        if self.label is not None:
            return label == self.label
        return serial == self.serial

    def __str__(self) -> str:
        return f"label {self.label!r}" if self.label is not None else f"serial {self.serial!r}"


def _token_serial(token: Any) -> str:
    raw = token.serial
    text = raw.decode("ascii", "replace") if isinstance(raw, bytes) else str(raw)
    return text.strip()


class Module:
    """A loaded PKCS#11 module. Get one with :meth:`acquire`, give it back with :meth:`release`."""

    def __init__(self, path: str, env: Mapping[str, str], *, reinit_interval: float,
                 clock: Callable[[], float]) -> None:
        self.path = path
        self.env = dict(env)
        self.reinit_interval = reinit_interval
        self._clock = clock
        self.generation = 0
        self.os_locking = False
        self.call_lock: threading.RLock | None = None  # set when OS locking is refused
        self._refs = 0
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._active = 0
        self._reinitializing = False
        self._last_reinit = float("-inf")
        self._pid = os.getpid()
        self._fork_epoch = _fork_epoch
        self._lib: Any = None
        # Around loading, initializing, listing tokens and logging in, across processes too
        # (SoftHSM rewrites a token's record at every login; see hsm.pkcs11.storelock).
        self.store_lock = StoreLock(self.path)
        self.failed = False  # the last re-initialize did not complete: try again first
        # True while a session pool may lend without entering (no re-initialize running or
        # failed, not a fresh fork child): pools read it without a lock, see _busy().
        self.ready = False
        self._pools: weakref.WeakSet[Any] = weakref.WeakSet()

    # -- registry -------------------------------------------------------------------------

    @classmethod
    def acquire(cls, path: str | os.PathLike[str], env: Mapping[str, str] | None = None, *,
                reinit_interval: float = 5.0,
                clock: Callable[[], float] = time.monotonic) -> Module:
        """The process's module for ``path``, loaded on first use with ``env`` set."""
        env = dict(env or {})
        real = Path(path).expanduser()
        try:
            real = real.resolve(strict=True)
            st = real.stat()
        except OSError:
            raise ModuleLoadError(f"PKCS#11 module {path} does not exist") from None
        if not real.is_file():
            raise ModuleLoadError(f"PKCS#11 module {path} is not a file")
        ident = (st.st_dev, st.st_ino)
        with _loader_lock:
            module = _registry.get(ident)
            if module is None:
                module = cls(str(real), env, reinit_interval=reinit_interval, clock=clock)
                module._load_locked()
                _registry[ident] = module
            elif module.env != env:
                raise ModuleLoadError(
                    f"PKCS#11 module {real} is already loaded with another environment; "
                    "give each member its own copy of the module"
                )
            module._refs += 1
            return module

    def release(self) -> None:
        """Give back one reference; the last one finalizes and unloads the module."""
        with _loader_lock:
            self._refs -= 1
            if self._refs > 0:
                return
            for ident, module in list(_registry.items()):
                if module is self:
                    del _registry[ident]
            with suppress(p11e.PKCS11Error):
                self._lib.finalize()
            self.generation += 1
            self._lib = None
            self.ready = False
            pkcs11.unload(self.path)

    # -- loading --------------------------------------------------------------------------

    @contextmanager
    def _environment(self) -> Iterator[None]:
        saved = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)
        try:
            yield
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def _load_locked(self) -> None:
        with self._environment(), self.store_lock:
            check_loadable(self.path)
            try:
                self._lib = pkcs11.lib(self.path)
            except p11e.PKCS11Error as exc:
                raise load_error(self.path, exc) from None
            if not self._lib.initialized:  # a cached library that was finalized before
                try:
                    self._lib.initialize()
                except p11e.PKCS11Error as exc:
                    raise load_error(self.path, exc) from None
            self._enable_os_locking()
        self.generation += 1
        self._pid = os.getpid()
        self.ready = True

    def _restart_locked(self) -> None:
        """Finalize (a module already down says so; ignored), initialize, OS locking.
        The caller holds the loader lock."""
        with self._environment(), self.store_lock:
            with suppress(p11e.PKCS11Error):
                self.lib.finalize()
            try:
                self.lib.initialize()
            except p11e.PKCS11Error as exc:
                error = translate_error(exc, "initialize")
                if error.reason is not Reason.ALREADY_INITIALIZED:
                    raise init_error(self.path, named(exc)) from exc
                # A C_Finalize that failed left python-pkcs11 believing the module is down
                # while it is still up: finalize it through its own function list, retry.
                finalize_module(self.path)
                try:
                    self.lib.initialize()
                except p11e.PKCS11Error as again:
                    raise init_error(self.path, named(again)) from again
            self._enable_os_locking()

    def _enable_os_locking(self) -> None:
        try:
            enable_os_locking(self.path)
        except OSLockingError as exc:
            if not exc.initialized:
                refused = named(native.error_for(exc.rv))
                raise init_error(self.path, f"{refused} with CKF_OS_LOCKING_OK, and again "
                                 "without") from None
            log.warning("module %s refused OS locking (%s); serializing every call to it",
                        self.path, exc)
            self.os_locking = False
            self.call_lock = threading.RLock()
        except (OSError, AttributeError) as exc:
            log.warning("module %s refused OS locking (%s); serializing every call to it",
                        self.path, exc)
            self.os_locking = False
            self.call_lock = threading.RLock()
        else:
            self.os_locking = True
            self.call_lock = None

    @property
    def lib(self) -> Any:
        if self._lib is None:
            raise HSMUnavailable(f"PKCS#11 module {self.path} was released", reason=Reason.RELEASED)
        return self._lib

    # -- calls in flight ------------------------------------------------------------------

    def enter(self) -> int:
        """Count a call in flight; returns the generation it runs in. Pair with :meth:`exit`."""
        if self._fork_epoch != _fork_epoch:
            self._after_fork()
        with self._lock:  # the plain lock: C-level, on every call's hot path
            while self._reinitializing:
                self._cond.wait()
            self._active += 1
            return self.generation

    def exit(self) -> None:
        with self._lock:
            self._active -= 1
            if self._active == 0 and self._reinitializing:
                self._cond.notify_all()  # a re-initialize is waiting for the drain

    @contextmanager
    def using(self) -> Iterator[int]:
        generation = self.enter()
        try:
            if self.call_lock is not None:
                with self.call_lock:
                    yield generation
            else:
                yield generation
        finally:
            self.exit()

    def register(self, pool: Any) -> None:
        """A session pool on this module: its lent sessions count as calls in flight."""
        self._pools.add(pool)

    def _busy(self) -> bool:
        return self._active > 0 or any(pool.lent for pool in list(self._pools))

    # -- recovery -------------------------------------------------------------------------

    def reinitialize(self, seen_generation: int, *, drain_timeout: float = 30.0) -> int:
        """Finalize and initialize again, unless someone already did since ``seen_generation``.

        Serialized, rate-limited to one per ``reinit_interval`` seconds (a refused attempt
        raises :class:`HSMUnavailable`), and run only once no other call is in flight.
        """
        with self._cond:
            if self.generation != seen_generation:
                return self.generation
            while self._reinitializing:
                self._cond.wait()
                if self.generation != seen_generation:
                    return self.generation
            now = self._clock()
            wait = self._last_reinit + self.reinit_interval - now
            if wait > 0:
                raise HSMUnavailable(
                    f"PKCS#11 module {self.path} is recovering; next attempt in {wait:.1f}s",
                    reason=Reason.RECOVERING,
                )
            self._last_reinit = now
            self._drain_locked(drain_timeout)
        self.failed = True
        try:
            with _loader_lock:
                self._restart_locked()
            self.failed = False
            log.info("PKCS#11 module %s re-initialized (generation %d)",
                     self.path, self.generation + 1)
        finally:
            with self._cond:
                self.generation += 1
                self._reinitializing = False
                self.ready = not self.failed
                self._cond.notify_all()
        return self.generation

    def _drain_locked(self, timeout: float) -> None:
        """With ``_cond`` held: stop new calls, wait until none is in flight."""
        self._reinitializing = True
        self.ready = False
        deadline = time.monotonic() + timeout
        while self._busy():
            left = deadline - time.monotonic()
            if left <= 0:
                self._reinitializing = False
                self.ready = not self.failed
                self._cond.notify_all()
                raise HSMUnavailable(
                    f"PKCS#11 module {self.path} has calls that never returned",
                    reason=Reason.HUNG_CALLS,
                )
            # Pools lending on the fast path don't notify: poll them.
            self._cond.wait(min(left, 0.002))

    @contextmanager
    def quiesced(self, *, drain_timeout: float = 30.0) -> Iterator[None]:
        """Hold every call to this module for the length of a ``with`` block.

        New calls wait (as during :meth:`reinitialize`, which runs first if one is under
        way), calls in flight and sessions lent by its pools finish first, and calls resume
        when the block ends, whatever happens inside. For work that must never run under a
        call of ours, e.g. foreign code finalizing the module (``hsm.testing`` does so to
        inject faults: SoftHSM crashes when finalized under a running call). Don't call
        the module through this object inside the block: the call would wait for its end.
        :class:`HSMUnavailable` if calls are still in flight after ``drain_timeout`` seconds.
        """
        with self._cond:
            while self._reinitializing:
                self._cond.wait()
            self._drain_locked(drain_timeout)
        try:
            yield
        finally:
            with self._cond:
                self._reinitializing = False
                self.ready = not self.failed
                self._cond.notify_all()

    def _after_fork(self) -> None:
        """In a forked child: the parent's sessions mean nothing here; initialize afresh."""
        with _loader_lock:
            if self._fork_epoch == _fork_epoch:
                return
            if os.getpid() == self._pid:  # loaded in this process after all
                self._fork_epoch = _fork_epoch
                return
            self._lock = threading.Lock()
            self._cond = threading.Condition(self._lock)
            self._active = 0
            self._reinitializing = False
            self._restart_locked()
            self.generation += 1
            self._pid = os.getpid()
            self._fork_epoch = _fork_epoch
            self.ready = True

    # -- tokens ---------------------------------------------------------------------------

    def tokens(self, *, entered: bool = False) -> list[tuple[str, str, Any]]:
        """``(label, serial, token)`` for every slot with a token present. ``entered``: the
        caller is already inside :meth:`using` (no second count, no wait for a
        re-initialize that would wait for the caller)."""
        if not entered:
            with self.using():
                return self.tokens(entered=True)
        found = []
        with self.store_lock, translated("list tokens"):
            for slot in self.lib.get_slots(token_present=True):
                try:
                    token = slot.get_token()
                except p11e.PKCS11Error as exc:
                    if translate_error(exc, "list tokens").reason in _NO_TOKEN:
                        continue  # the slot is empty, or its token unusable: not ours
                    raise
                if not token.flags & pkcs11.TokenFlag.TOKEN_INITIALIZED:
                    continue  # SoftHSM's spare empty slot: nothing to choose there
                found.append((token.label, _token_serial(token), token))
        return found

    def find_token(self, selector: TokenSelector, *, entered: bool = False) -> Any:
        """The token ``selector`` names; :class:`TokenNotFound` lists the ones that exist.
        ``entered`` as for :meth:`tokens`."""
        tokens = self.tokens(entered=entered)
        for label, serial, token in tokens:
            if selector.matches(label, serial):
                return token
        present = ", ".join(f"{label!r} (serial {serial})" for label, serial, _ in tokens)
        raise TokenNotFound(
            f"no token with {selector} in {self.path}; tokens present: {present or 'none'}"
        )

    def session_limits(self, token: Any, *, entered: bool = False) -> native.SessionLimits:
        """How many sessions (and read-write sessions) the module lets this process open on
        ``token``; None where it sets no limit or does not say. ``entered`` as for
        :meth:`tokens`."""
        if not entered:
            with self.using():
                return self.session_limits(token, entered=True)
        with self.store_lock, translated("token info"):
            return native.session_limits(self.path, int(token.slot.slot_id))

    def __repr__(self) -> str:
        return f"Module({self.path!r}, generation={self.generation})"


def _after_fork_in_child() -> None:
    # Checked on every call instead of os.getpid(), a syscall (dear in sandboxes).
    global _loader_lock, _fork_epoch
    _loader_lock = threading.Lock()
    _fork_epoch += 1
    for module in _registry.values():
        module.ready = False  # its pools take the slow path, which re-initializes it
        module.store_lock = StoreLock(module.path)  # another thread may have held it


os.register_at_fork(after_in_child=_after_fork_in_child)
