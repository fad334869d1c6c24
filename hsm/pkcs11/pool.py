"""Session pool for one token: one long-lived login session, worker sessions lent to callers.

Login in PKCS#11 is per token per application, not per session: one session logs in and
stays open for the life of the pool (closing it would log every session out); worker
sessions are opened without a PIN and inherit the login. Sessions are lent through
``with pool.session() as lease:`` and come back to an idle list; at most ``size`` are out at
once.

A PIN the token refused is never sent to it again by this process (:class:`_Refusals`): real
HSMs lock the account. The login itself is one ``C_Login`` on a session the pool opened
(:mod:`hsm.pkcs11.native`), so that a refused login closes that session instead of leaking it.

After an error, the pool does what :func:`~hsm.pkcs11.translate.recovery_for` says: forget
the lease's key objects, drop the session, or (for a lost module or token) have the module
re-initialized and log in again before the next lease. Nothing made in an older module
generation is ever used again. The pool itself never retries a call: the caller (the
cluster layer) decides that.

Longer than this package's ~400-line rule on purpose: lending, giving back, login and
recovery share the pool's lock-free state and the hot path (:meth:`SessionPool.lend`), so
they stay in one class. :class:`~hsm.pkcs11.lease.Lease` itself is in its own module.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import logging
import os
import queue
import threading
from contextlib import suppress
from types import TracebackType
from typing import Any

import pkcs11.exceptions as p11e

from hsm.errors import (
    ConfigError,
    HSMError,
    HSMUnavailable,
    OperationFailed,
    PinIncorrect,
    Reason,
    TokenNotFound,
)
from hsm.pkcs11 import native
from hsm.pkcs11.lease import Lease
from hsm.pkcs11.module import Module, TokenSelector
from hsm.pkcs11.objects import MAPPER
from hsm.pkcs11.pin import PinSource, Secret
from hsm.pkcs11.translate import Recovery, recovery_for, translate_error, translated

__all__ = ["Lease", "SessionPool"]

log = logging.getLogger(__name__)

# Login is per token per process: every client of one token in this process shares a pool.
_shared_lock = threading.Lock()
_shared: dict[tuple[int, str], SessionPool] = {}


class _Refusals:
    """The PINs a token refused in this process, per (module path, token serial): never
    sent to that token again until the process restarts (real HSMs lock the account after
    a few wrong PINs, and SoftHSM counts them too). A PIN is remembered by its source and by
    a keyed hash (the key is random per process and never leaves it), never as itself."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key = os.urandom(32)
        self._by_token: dict[tuple[str, str], list[tuple[PinSource, bytes, Reason]]] = {}

    def _digest(self, pin: Secret) -> bytes:
        return hmac.new(self._key, pin.reveal().encode(), hashlib.sha256).digest()

    def add(self, token: tuple[str, str], source: PinSource, pin: Secret,
            reason: Reason) -> None:
        with self._lock:
            self._by_token.setdefault(token, []).append((source, self._digest(pin), reason))

    def find(self, token: tuple[str, str], source: PinSource, pin: Secret) -> Reason | None:
        """The reason a refused PIN was refused, if this source or this PIN was. A ``prompt``
        source counts only by the PIN: a person typing another PIN is a new, deliberate
        attempt, not a retry."""
        digest = self._digest(pin)
        with self._lock:
            for known, known_digest, reason in self._by_token.get(token, ()):
                same_source = known == source and source.kind != "prompt"
                if same_source or hmac.compare_digest(known_digest, digest):
                    return reason
        return None


_refusals = _Refusals()


class _Lending:
    """The context manager :meth:`SessionPool.session` returns (a class: it is on every
    call's hot path, where a generator-based one costs several microseconds)."""

    __slots__ = ("_entered", "_lease", "_pool")

    def __init__(self, pool: SessionPool) -> None:
        self._pool = pool

    def __enter__(self) -> Lease:
        self._lease, self._entered = self._pool.lend()
        return self._lease

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._pool.give_back(self._lease, exc, self._entered)


class SessionPool:
    """Sessions on one token of one module. Thread-safe; use as a context manager."""

    def __init__(self, module: Module, selector: TokenSelector, pin: PinSource, *,
                 size: int = 8, acquire_timeout: float = 30.0, name: str | None = None,
                 ) -> None:
        if size < 1:
            raise ValueError("pool size must be at least 1")
        self.module = module
        self.selector = selector
        # Names the token in messages (a cluster passes the member's name).
        self.name = name or str(selector)
        self.pin_source = pin
        self.size = size
        self.acquire_timeout = acquire_timeout
        self._pin: Secret | None = None
        self._token: Any = None
        self._login: Any = None
        self._login_generation = -1
        self._broken_generation = -1
        # Free slots (``size`` tokens while nothing is lent) and idle sessions, most recent
        # last. Both are C code with atomic operations: bounding, waiting and the hand-over
        # cost a call or two each way and no lock of ours (this is every call's hot path).
        self._slots: queue.SimpleQueue[None] = queue.SimpleQueue()
        for _ in range(size):
            self._slots.put(None)
        self._idle: collections.deque[Lease] = collections.deque()
        # The generation in which leases may skip entering the module (logged in, not
        # broken, OS locking on); -1 when they may not. See _lend.
        self._fast_generation = -1
        module.register(self)
        # Repair a broken module inside the next call (True: nowhere else to go), or leave
        # it to recover() and fail fast meanwhile (False: a cluster fails over instead, and
        # its probe repairs the member, so no caller waits for a re-initialize).
        self.inline_recovery = True
        self._keys_epoch = 0  # bumped by drop_keys(): leases forget their key objects
        self._lock = threading.Lock()  # guards the login fields, never an HSM call
        self._login_lock = threading.Lock()
        self._closed = False
        self._refs = 0
        self._ident: tuple[int, str] = (0, "")

    # -- sharing ---------------------------------------------------------------------------

    @classmethod
    def acquire(cls, module: Module, selector: TokenSelector, pin: PinSource, *,
                size: int = 8, name: str | None = None) -> SessionPool:
        """The process's open pool for this token, shared and counted; :meth:`release` it.

        A second caller must know the same PIN: it is compared here, in constant time,
        without a second login (the HSM allows one login per token per process). A PIN
        the token refused once is never sent to it again in this process
        (:class:`PinIncorrect` at once, see :meth:`open`). ``name`` names the token in
        messages (the member's name; the selector by default).
        """
        token = module.find_token(selector)
        ident = (id(module), SessionPool._serial_of(token))
        with _shared_lock:
            pool = _shared.get(ident)
            if pool is not None and not pool._closed:
                secret = pin.read()
                known = pool._pin
                if known is None or not hmac.compare_digest(
                    secret.reveal().encode(), known.reveal().encode()
                ):
                    raise PinIncorrect(
                        f"PIN for token {selector} differs from the one this process "
                        "logged in with", reason=Reason.PIN_INCORRECT,
                    )
                pool._refs += 1
                return pool
            pool = cls(module, selector, pin, size=size, name=name).open()
            pool._refs = 1
            pool._ident = ident
            _shared[ident] = pool
            return pool

    def release(self) -> None:
        """Give back one reference from :meth:`acquire`; the last one closes the pool."""
        with _shared_lock:
            self._refs -= 1
            if self._refs > 0:
                return
            if _shared.get(self._ident) is self:
                del _shared[self._ident]
        self.close()

    @staticmethod
    def _serial_of(token: Any) -> str:
        raw = token.serial
        return (raw.decode("ascii", "replace") if isinstance(raw, bytes) else str(raw)).strip()

    # -- life cycle ------------------------------------------------------------------------

    def open(self) -> SessionPool:
        """Read the PIN, find the token, check ``size`` against the module's session limit
        (:class:`ConfigError`), log in. A wrong PIN raises :class:`PinIncorrect` at once and
        is never sent to this token again by any pool of this process: later logins with
        the same PIN source, or the same PIN, raise :class:`PinIncorrect` without calling
        the HSM, until the process restarts."""
        if self._pin is None:
            self._pin = self.pin_source.read()
        self._ensure_login()
        return self

    def close(self) -> None:
        """Close every idle session and the login session (this logs the token out)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._fast_generation = -1
            idle = self._drain()
            login, self._login = self._login, None
            login_generation = self._login_generation
        generation = self.module.generation
        for lease in idle:
            if lease.generation == generation:
                self._close_quietly(lease.session)
        if login is not None and login_generation == generation:
            # Our login was made on this session by hand (hsm.pkcs11.native): python-pkcs11
            # would not log out when closing it, so log out first (for the whole token).
            with suppress(p11e.PKCS11Error):
                native.logout(self.module.path, int(login.handle))
            self._close_quietly(login)
        self._pin = None

    def __enter__(self) -> SessionPool:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def token_label(self) -> str:
        return str(self._token.label) if self._token is not None else ""

    @property
    def token_serial(self) -> str:
        return "" if self._token is None else self._serial_of(self._token)

    # -- login -----------------------------------------------------------------------------

    def recover(self) -> None:
        """Repair a broken module or token now (re-initialize, log in again) whatever
        ``inline_recovery`` says: what a cluster's probe calls."""
        self._ensure_login(recover=True)

    def _ensure_login(self, *, recover: bool = False) -> None:
        """Log in unless the current module generation already has our login session."""
        generation = self.module.generation
        if (self._login_generation == generation and self._broken_generation != generation
                and self._login is not None):
            return
        with self._login_lock:
            generation = self.module.generation
            if self._broken_generation == generation or self.module.failed:
                if not (recover or self.inline_recovery):
                    raise HSMUnavailable(
                        f"token {self.selector} of {self.module.path} is broken; it is "
                        "repaired by the next probe", reason=Reason.RECOVERING)
                self.module.reinitialize(generation)
            if self._login_generation == self.module.generation and self._login is not None:
                return
            if self._pin is None:
                raise OperationFailed("session pool is not open", reason=Reason.NOT_OPEN)
            with self.module.using() as generation, self.module.store_lock:
                # The store lock spans finding the token and logging in: SoftHSM rewrites
                # the token's record at every login (hsm.pkcs11.storelock).
                try:
                    token = self.module.find_token(self.selector, entered=True)
                except HSMUnavailable:
                    self._broken_generation = generation
                    self._fast_generation = -1
                    raise
                except TokenNotFound as exc:
                    if self._token is None:
                        raise
                    # It was there before: the token is lost for now, not misconfigured.
                    self._broken_generation = generation
                    self._fast_generation = -1
                    raise HSMUnavailable(str(exc), reason=Reason.TOKEN_LOST) from None
                ident = (self.module.path, self._serial_of(token))
                refused = _refusals.find(ident, self.pin_source, self._pin)
                if refused is not None:
                    raise PinIncorrect(
                        f"token {self.name} ({self.selector} of {self.module.path}): the HSM "
                        f"refused the PIN from {self.pin_source} earlier in this process "
                        f"({refused}); it is not sent again (real HSMs lock the account): "
                        "correct the PIN, then restart the process", reason=refused)
                if self._token is None:
                    self._check_size(token)
                try:
                    login = self._log_in(token)
                except PinIncorrect as exc:
                    _refusals.add(ident, self.pin_source, self._pin, exc.reason)
                    raise PinIncorrect(
                        f"token {self.name} ({self.selector} of {self.module.path}): the HSM "
                        f"refused the PIN from {self.pin_source} ({exc.reason}); it is not "
                        "sent again in this process (real HSMs lock the account): correct "
                        "the PIN, then restart the process", reason=exc.reason) from None
                except HSMError as exc:
                    if exc.transient:
                        self._broken_generation = generation
                        self._fast_generation = -1
                    if exc.reason is Reason.USER_ALREADY_LOGGED_IN:
                        raise OperationFailed(
                            f"token {self.name} is already logged in by other code in this "
                            "process; let hsm own the login", reason=Reason.ALREADY_LOGGED_IN,
                        ) from None
                    raise
            with self._lock:
                self._token = token
                self._login = login
                self._login_generation = generation
                self._fast_generation = generation if self.module.call_lock is None else -1
            log.info("logged in to token %s of %s (generation %d)",
                     self.selector, self.module.path, generation)

    def _log_in(self, token: Any) -> Any:
        """Open the login session and log in on it; a refused login closes that session
        (python-pkcs11's ``Token.open(user_pin=...)`` would leak it). Inside the module."""
        assert self._pin is not None
        with translated("open login session"):
            session = token.open(rw=True, attribute_mapper=MAPPER)
        try:
            native.login(self.module.path, int(session.handle), native.CKU_USER,
                         self._pin.reveal())
        except p11e.PKCS11Error as exc:
            self._close_quietly(session)
            raise translate_error(exc, "login") from exc
        except BaseException:
            self._close_quietly(session)
            raise
        return session

    def _check_size(self, token: Any) -> None:
        """The pool needs ``size`` worker sessions and the login session, all read-write:
        refuse a size the module's limit for one application can't give (when it has one)."""
        limits = self.module.session_limits(token, entered=True)
        need = self.size + 1
        for limit, what in ((limits.max_rw_sessions, "read-write sessions"),
                            (limits.max_sessions, "sessions")):
            if limit is not None and need > limit:
                fits = (f"set pool_size to at most {limit - 1}" if limit > 1
                        else "the pool needs at least 2")
                raise ConfigError(
                    f"pool_size = {self.size} for token {self.name}: its module "
                    f"({self.module.path}) allows one process at most {limit} {what} on it, "
                    f"and the pool uses pool_size + 1 (the login session); {fits}")

    # -- leases ----------------------------------------------------------------------------

    def session(self) -> _Lending:
        """Lend a worker session: ``with pool.session() as lease:``. Errors raised inside
        are acted on (see the module docstring), then re-raised."""
        return _Lending(self)

    @property
    def lent(self) -> int:
        """Sessions lent right now (the module's re-initialize waits for 0)."""
        return self.size - self._slots.qsize()

    def lend(self) -> tuple[Lease, bool]:
        """Lend a session; the flag says whether the module was entered (slow path). Pair
        with :meth:`give_back` in a ``try`` (``session()`` does it for you; the hot paths of
        the keyring call these two directly, one context-manager object less per call).

        Fast path: take a slot, then check -- without a lock, in this order -- that the
        module is ready and our login belongs to its generation. A re-initialize first
        clears ``module.ready``, then waits until no pool has a session lent, so either it
        sees our slot or we see its flag (the GIL orders these plain reads and writes).
        Slow path (login, recovery, serialized modules): give the slot back while waiting
        for the module, enter it counted, then take a slot again.
        """
        if self._closed:
            raise OperationFailed("session pool is closed", reason=Reason.CLOSED)
        try:
            self._slots.get_nowait()  # a free slot, the common case: no timeout machinery
        except queue.Empty:
            self._take_slot()
        module = self.module
        if module.ready and self._fast_generation == module.generation:
            generation, entered = self._fast_generation, False
        else:
            self._slots.put(None)
            generation, entered = self._enter_logged_in(), True
            try:
                self._take_slot()
            except BaseException:
                self._leave()
                raise
        try:
            lease: Lease | None = self._idle.pop()
        except IndexError:
            lease = None
        if lease is None or lease.generation != generation:
            # An older generation's session is dropped untouched (its handle may be reused).
            try:
                with translated("open session"):
                    lease = Lease(self._token.open(rw=True, attribute_mapper=MAPPER),
                                  generation, self._keys_epoch)
            except BaseException:
                self._release(None, entered)
                raise
        elif lease.keys_epoch != self._keys_epoch:
            lease.keys.clear()
            lease.keys_epoch = self._keys_epoch
        return lease, entered

    def _take_slot(self) -> None:
        try:
            self._slots.get(timeout=self.acquire_timeout)
        except queue.Empty:
            raise self._exhausted() from None

    def _exhausted(self) -> HSMUnavailable:
        return HSMUnavailable(
            f"no session free on token {self.selector} after {self.acquire_timeout}s",
            reason=Reason.POOL_EXHAUSTED,
        )

    def give_back(self, lease: Lease, exc: BaseException | None, entered: bool) -> None:
        """Return what :meth:`lend` lent; ``exc`` is what the caller raised, if anything."""
        if exc is None and not entered and not self._closed:
            self._idle.append(lease)  # the common case, in three C calls
            self._slots.put(None)
            return
        keep: Lease | None = lease
        try:
            if exc is not None:
                keep = self._after_error(lease, exc)
            if keep is not None and self._closed:
                self._discard(keep)
                keep = None
        finally:
            self._release(keep, entered)

    def _release(self, keep: Lease | None, entered: bool) -> None:
        if keep is not None:
            self._idle.append(keep)
        if entered:
            self._leave()
        self._slots.put(None)

    def _drain(self) -> list[Lease]:
        out = []
        with suppress(IndexError):
            while True:
                out.append(self._idle.pop())
        return out

    def _enter_logged_in(self) -> int:
        """Enter the module in a generation whose login session exists.

        A re-initialize can land between the login check and entering the module; a
        session opened then would not be logged in (private keys invisible), so check
        again once inside and go round if the generation moved.
        """
        module = self.module
        for _ in range(3):
            generation = module.generation
            if (self._login_generation != generation or self._broken_generation == generation
                    or module.failed):
                self._ensure_login()
            generation = module.enter()
            if generation == self._login_generation:
                if module.call_lock is not None:
                    module.call_lock.acquire()
                return generation
            module.exit()
        raise HSMUnavailable(f"module {module.path} keeps re-initializing",
                             reason=Reason.RECOVERING)

    def _leave(self) -> None:
        call_lock = self.module.call_lock
        if call_lock is not None:
            call_lock.release()
        self.module.exit()

    def _discard(self, lease: Lease) -> None:
        # A session of an older generation is never touched: its handle may now be another's.
        if lease.generation == self.module.generation:
            self._close_quietly(lease.session)

    def _after_error(self, lease: Lease, exc: BaseException) -> Lease | None:
        """Act on an error raised inside a lease; return the lease if it may be lent again."""
        if not isinstance(exc, HSMError):
            # Unknown state mid-operation: don't lend this session again.
            self._discard(lease)
            return None
        recovery = recovery_for(exc)
        if recovery is Recovery.NONE:
            return lease
        if recovery is Recovery.KEYS:
            lease.keys.clear()
            return lease
        if recovery is Recovery.SESSION:
            self._discard(lease)
            return None
        log.warning("token %s of %s lost (%s); will re-initialize the module",
                    self.selector, self.module.path, exc.reason)
        self._broken_generation = lease.generation
        self._fast_generation = -1
        return None

    def check_token(self, lease: Lease) -> None:
        """Ask the token for its info; raises :class:`HSMUnavailable` if it is gone.

        A search that finds nothing can mean "no such key" or "the token is lost" (SoftHSM
        answers both with an empty result); this tells them apart.
        """
        with self.module.store_lock, translated("token info"):
            lease.session.token.slot.get_token()

    def drop_keys(self) -> None:
        """Make every session forget its key objects (after keys were destroyed)."""
        self._keys_epoch += 1

    @staticmethod
    def _close_quietly(session: Any) -> None:
        with suppress(p11e.PKCS11Error):
            session.close()

    def __repr__(self) -> str:
        return f"SessionPool(token {self.selector}, module {self.module.path!r}, size={self.size})"
