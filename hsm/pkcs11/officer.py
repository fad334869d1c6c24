"""The security officer's session on one token: login, and typed calls made as the SO.

Only the security officer (SO) can mark a key CKA_TRUSTED, and only at creation; the cluster
wrapping key (:mod:`hsm.keys.replication`, which holds its policy and the ceremony's logic) is
made in a :class:`SecurityOfficer` session. Such a key also carries a ``CKA_UNWRAP_TEMPLATE``
(an attribute array): python-pkcs11 can't write attribute arrays through its attribute
mapper, so this session's mapper packs boolean templates itself, with ctypes, and never reads
one back.

Login is per token per application (FACTS): if this process holds a user login on the token
(an open client or session pool), the SO can't log in (``AnotherUserAlreadyLoggedIn``), and
while the SO is logged in no user can. The error says so.
"""

from __future__ import annotations

import ctypes
import logging
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from types import TracebackType
from typing import Any

import pkcs11.exceptions as p11e
from pkcs11 import Attribute
from pkcs11.attributes import AttributeMapper

from hsm.errors import HSMError, HSMUnavailable, OperationFailed, PinIncorrect, Reason
from hsm.pkcs11 import native
from hsm.pkcs11.calls import create_key, find_keys
from hsm.pkcs11.calls import random_bytes as _random_bytes
from hsm.pkcs11.module import Module, TokenSelector
from hsm.pkcs11.objects import Attr, AttrValue, KeyTemplate, SecretKey, attribute_mapper
from hsm.pkcs11.pin import Secret
from hsm.pkcs11.translate import translate_error, translated

__all__ = ["SecurityOfficer"]

log = logging.getLogger(__name__)

# What an SO login gets while a user login to the same token exists in this process.
_LOGGED_IN = frozenset({Reason.ANOTHER_USER_LOGGED_IN, Reason.USER_ALREADY_LOGGED_IN,
                        Reason.USER_TOO_MANY_TYPES})


# -- CKA_UNWRAP_TEMPLATE, packed by hand ----------------------------------------------------


class _CKAttribute(ctypes.Structure):
    """``CK_ATTRIBUTE``: type, pointer to the value, value length (CK_ULONG = unsigned long)."""

    if sys.platform == "win32":  # PKCS#11 structures are packed to 1 byte on Windows only
        _pack_ = 1
    _fields_ = (("type", ctypes.c_ulong), ("pValue", ctypes.c_void_p),
                ("ulValueLen", ctypes.c_ulong))


# The CK_BBOOL values the packed template points at: alive for the life of the process, so
# the pointers inside a packed template stay valid whenever python-pkcs11 passes it on.
_CK_TRUE = ctypes.c_ubyte(1)
_CK_FALSE = ctypes.c_ubyte(0)


def _pack_bool_template(items: Sequence[tuple[Attr, bool]]) -> bytes:
    """An array of ``CK_ATTRIBUTE`` with boolean values, as the bytes of the array."""
    array = (_CKAttribute * len(items))(*(
        _CKAttribute(int(kind.value), ctypes.addressof(_CK_TRUE if value else _CK_FALSE), 1)
        for kind, value in items
    ))
    return bytes(array)


def _refuse_to_read(_raw: bytes) -> Any:
    # Reading an attribute array through python-pkcs11 would hand the module uninitialized
    # inner pointers to write through: never done.
    raise NotImplementedError("CKA_UNWRAP_TEMPLATE is written, never read, by hsm")


def _officer_mapper() -> AttributeMapper:
    mapper = attribute_mapper()
    mapper.register_handler(Attribute.UNWRAP_TEMPLATE, _pack_bool_template, _refuse_to_read)
    return mapper


# -- the session -----------------------------------------------------------------------------


class SecurityOfficer:
    """A security-officer login on one token. Use as a context manager.

    Every call runs inside :meth:`Module.using` (a re-initialize waits for it) and refuses
    to run in a later module generation than the login's (SoftHSM reuses handle numbers):
    the key objects it hands out are valid only while the login lasts. ``name`` names the
    token in messages (the member name; the selector by default). The SO PIN is never
    shown.
    """

    def __init__(self, module: Module, selector: TokenSelector, so_pin: Secret, *,
                 name: str | None = None) -> None:
        self.module = module
        self.selector = selector
        self.name = name or str(selector)
        self._so_pin = so_pin
        self._session: Any = None
        self._generation = -1

    # -- life cycle ------------------------------------------------------------------------

    def open(self) -> SecurityOfficer:
        """Log in as the security officer. A wrong SO PIN raises at once, never retried; the
        session opened for the refused login is closed."""
        if self._session is not None:
            return self
        with self.module.using() as generation, self.module.store_lock:
            token = self.module.find_token(self.selector, entered=True)
            try:
                with translated("security officer session"):
                    session = token.open(rw=True, attribute_mapper=_officer_mapper())
            except HSMError as error:
                raise self._login_error(error) from error
            try:
                native.login(self.module.path, int(session.handle), native.CKU_SO,
                             self._so_pin.reveal())
            except p11e.PKCS11Error as exc:
                with suppress(p11e.PKCS11Error):
                    session.close()
                raise self._login_error(translate_error(exc, "security officer login")) from exc
            except BaseException:
                with suppress(p11e.PKCS11Error):
                    session.close()
                raise
        self._session, self._generation = session, generation
        log.info("security officer logged in to token %s", self.name)
        return self

    def close(self) -> None:
        """Log the security officer out and close the session."""
        session, self._session = self._session, None
        if session is not None and self.module.generation == self._generation:
            with self.module.using(), suppress(p11e.PKCS11Error):
                # The login was made by hand (hsm.pkcs11.native): python-pkcs11 would not log
                # out when closing the session.
                native.logout(self.module.path, int(session.handle))
            with self.module.using(), suppress(p11e.PKCS11Error):
                session.close()

    def __enter__(self) -> SecurityOfficer:
        return self.open()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _login_error(self, error: HSMError) -> HSMError:
        if error.reason in _LOGGED_IN:
            return OperationFailed(
                f"token {self.name}: the security officer can't log in while this process "
                "holds a user login to the token (PKCS#11 login is per token per "
                "application); run the ceremony before any client opens this member, or "
                "close those clients first", reason=Reason.USER_LOGGED_IN,
            )
        if error.reason is Reason.SESSION_READ_ONLY_EXISTS:
            return OperationFailed(
                f"token {self.name}: the security officer can't log in while read-only "
                "sessions are open on the token in this process; close them first",
                reason=Reason.SESSION_READ_ONLY_EXISTS,
            )
        if isinstance(error, PinIncorrect):
            return PinIncorrect(f"token {self.name}: the security officer PIN was refused",
                                reason=error.reason)
        return type(error)(f"token {self.name}: {error.message}", reason=error.reason)

    @contextmanager
    def _call(self, operation: str, *, integrity: bool = False) -> Iterator[Any]:
        """Enter the module in the login's generation and translate errors; yields the
        python-pkcs11 session."""
        if self._session is None:
            raise OperationFailed(f"token {self.name}: no security officer session",
                                  reason=Reason.NOT_OPEN)
        with self.module.using() as generation:
            if generation != self._generation:
                raise HSMUnavailable(
                    f"token {self.name}: the module was re-initialized during the ceremony "
                    "(the security officer's login is gone); run it again",
                    reason=Reason.RECOVERING,
                )
            with translated(operation, integrity=integrity):
                yield self._session

    # -- calls -----------------------------------------------------------------------------

    def find_keys(self, label: str, *, operation: str = "find key") -> list[SecretKey]:
        """The secret keys labelled ``label`` on the token."""
        with self._call(operation) as session:
            return find_keys(session, label, operation=operation)

    def read(self, key: SecretKey, attrs: Sequence[Attr], *,
             operation: str = "read key attributes") -> dict[Attr, AttrValue]:
        """:meth:`SecretKey.read` in this session."""
        with self._call(operation):
            return key.read(attrs, operation=operation)

    def check_value(self, key: SecretKey, *, operation: str = "key check value",
                    ) -> bytes | None:
        """:meth:`SecretKey.check_value` in this session."""
        with self._call(operation):
            return key.check_value(operation=operation)

    def create_key(self, template: KeyTemplate, value: bytes | bytearray, *,
                   unwrap_template: Sequence[tuple[Attr, bool]] | None = None,
                   operation: str = "create key") -> SecretKey:
        """A new secret key holding ``value``, exactly ``template``; ``unwrap_template``, if
        given, becomes its ``CKA_UNWRAP_TEMPLATE`` (what every key unwrapped under it must
        say about itself)."""
        extra = None
        if unwrap_template is not None:
            extra = {Attribute.UNWRAP_TEMPLATE: tuple(unwrap_template)}
        with self._call(operation) as session:
            return create_key(session, template, value, extra=extra, operation=operation)

    def unwrap(self, key: SecretKey, wrapped: bytes, mechanism: int, template: KeyTemplate,
               *, operation: str = "unwrap key", integrity: bool = True) -> SecretKey:
        """:meth:`SecretKey.unwrap` in this session."""
        with self._call(operation, integrity=integrity):
            return key.unwrap(wrapped, mechanism, template, operation=operation,
                              integrity=integrity)

    def destroy(self, key: SecretKey, *, operation: str = "destroy key") -> None:
        """:meth:`SecretKey.destroy` in this session."""
        with self._call(operation):
            key.destroy(operation=operation)

    def random(self, size: int) -> bytearray:
        """``size`` bytes from the token's random number generator."""
        with self._call("generate random") as session:
            return bytearray(_random_bytes(session, size))

    def __repr__(self) -> str:
        state = "logged in" if self._session is not None else "closed"
        return f"<SecurityOfficer token {self.name} {state}>"
