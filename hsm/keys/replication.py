"""The cluster wrapping key: what lets a master key move between HSMs without leaving them.

Replicable master keys are EXTRACTABLE and WRAP_WITH_TRUSTED (:mod:`hsm.keys.master`): the
HSM wraps them only under a key whose CKA_TRUSTED is true, and only the security officer
(SO) can set that, at creation. This module makes that key, the *cluster wrapping key*, on
one token, in an SO session; :func:`hsm.cluster.ceremony.init_cluster` runs it on every
member with the same key material (docs/CLUSTER-KEYS.md says what that protects and what it
does not).

The cluster wrapping key is AES-256, a token object, CKA_TRUSTED, WRAP and UNWRAP only (no
ENCRYPT/DECRYPT: a blob can't simply be decrypted with it), SENSITIVE, not EXTRACTABLE, not
MODIFIABLE, PRIVATE=false (SoftHSM's SO can't create private objects), labelled
:data:`CLUSTER_WRAP_LABEL`. It also carries a ``CKA_UNWRAP_TEMPLATE``: every key unwrapped
under it must be SENSITIVE, WRAP_WITH_TRUSTED and not DERIVE. Without that, anyone holding
the user PIN could unwrap an exported master key into a copy that is *not* sensitive and read
it in plaintext (measured on SoftHSM 2.6.1, which enforces the template). python-pkcs11 can't
write attribute-array attributes, so the template is packed here with ctypes.

After creating the key, the SO session tests it: a blob made in software under the material
must unwrap under it (the HSM holds that material), and unwrapping into a readable key must
be refused (the module enforces the unwrap template). A key that fails is destroyed.

Login is per token per application (FACTS): if this process holds a user login on the token
(an open client or session pool), the SO can't log in (``AnotherUserAlreadyLoggedIn``), and
while the SO is logged in no user can. Run the ceremony before any client opens the member.

Hazmat: the ceremony and :class:`hsm.keys.Keyring`'s export/import use this.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from types import TracebackType
from typing import Any

import pkcs11.exceptions as p11e
from cryptography.hazmat.primitives import keywrap
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass
from pkcs11.attributes import AttributeMapper

from hsm.errors import (
    HSMError,
    HSMUnavailable,
    InvalidInput,
    OperationFailed,
    PinIncorrect,
    Reason,
)
from hsm.pkcs11 import Module, Secret, TokenSelector, translate_error, translated

__all__ = [
    "CLUSTER_WRAP_ID",
    "CLUSTER_WRAP_LABEL",
    "MATERIAL_BYTES",
    "OfficerSession",
    "establish_wrapping_key",
    "find_wrapping_key",
    "material_kcv",
    "no_wrapping_key",
]

log = logging.getLogger(__name__)

CLUSTER_WRAP_LABEL = "hsm/cluster-wrap"
CLUSTER_WRAP_ID = b"hsm/cluster-wrap"
MATERIAL_BYTES = 32  # AES-256

# What every key unwrapped under the cluster wrapping key must say about itself.
UNWRAP_TEMPLATE: tuple[tuple[Attribute, bool], ...] = (
    (Attribute.SENSITIVE, True),
    (Attribute.WRAP_WITH_TRUSTED, True),
    (Attribute.DERIVE, False),
)

_SECRET = ObjectClass.SECRET_KEY

# Errors a security-officer login gets while a user login to the same token exists in this
# process (or read-only sessions are open): login is per token per application.
_LOGGED_IN_ERRORS = (
    p11e.AnotherUserAlreadyLoggedIn,
    p11e.UserAlreadyLoggedIn,
    p11e.UserTooManyTypes,
)
# What a module answers when an unwrap template conflicts with the caller's template.
_TEMPLATE_REFUSALS = (
    p11e.TemplateInconsistent,
    p11e.TemplateIncomplete,
    p11e.AttributeValueInvalid,
)


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


def _pack_bool_template(items: tuple[tuple[Attribute, bool], ...]) -> bytes:
    """An array of ``CK_ATTRIBUTE`` with boolean values, as the bytes of the array."""
    array = (_CKAttribute * len(items))(*(
        _CKAttribute(int(kind), ctypes.addressof(_CK_TRUE if value else _CK_FALSE), 1)
        for kind, value in items
    ))
    return bytes(array)


def _refuse_to_read(_raw: bytes) -> Any:
    # Reading an attribute array through python-pkcs11 would hand the module uninitialized
    # inner pointers to write through: never done.
    raise NotImplementedError("CKA_UNWRAP_TEMPLATE is written, never read, by hsm")


def _officer_mapper() -> AttributeMapper:
    mapper = AttributeMapper()
    mapper.register_handler(Attribute.UNWRAP_TEMPLATE, _pack_bool_template, _refuse_to_read)
    return mapper


# -- helpers shared with the keyring ---------------------------------------------------------


def material_kcv(material: bytes | bytearray) -> str:
    """The key check value of AES key material: AES-ECB of a zero block, first 3 bytes, hex.

    Computed in software, on material this process holds anyway (the ceremony); the same
    value the HSM reports as ``CKA_CHECK_VALUE`` for that key.
    """
    _check_material(material)
    encryptor = Cipher(algorithms.AES(material), modes.ECB()).encryptor()  # noqa: S305 (KCV)
    block = encryptor.update(bytes(16)) + encryptor.finalize()
    return block[:3].hex()


def _check_material(material: object) -> None:
    if not isinstance(material, bytes | bytearray):
        raise InvalidInput(f"wrapping key material must be bytes, not {type(material).__name__}")
    if len(material) != MATERIAL_BYTES:
        raise InvalidInput(f"wrapping key material must be {MATERIAL_BYTES} bytes "
                           f"(AES-256), got {len(material)}")


def find_wrapping_key(session: Any, label: str = CLUSTER_WRAP_LABEL) -> Any | None:
    """The trusted wrapping key labelled ``label`` in ``session``'s token, or None if absent.

    Raises :class:`OperationFailed` if several keys carry the label, or if the one that does
    is not marked CKA_TRUSTED (anyone with the user PIN can create a key under any label;
    only the security officer can make a trusted one). Call inside a lease.
    """
    with translated("find wrapping key"):
        found = list(session.get_objects({Attribute.CLASS: _SECRET, Attribute.LABEL: label}))
    if not found:
        return None
    if len(found) > 1:
        raise OperationFailed(f"{len(found)} secret keys are labelled {label!r}; refusing to "
                              "guess which is the cluster wrapping key",
                              reason=Reason.DUPLICATE_KEY)
    key = found[0]
    with translated("read wrapping key attributes"):
        trusted = _bool_attribute(key, Attribute.TRUSTED)
    if not trusted:
        raise OperationFailed(
            f"the key labelled {label!r} is not marked trusted (CKA_TRUSTED): it was not made "
            "by `hsm cluster init`; have the security officer remove it and run the ceremony",
            reason=Reason.WRAPPING_KEY_UNTRUSTED,
        )
    return key


def no_wrapping_key(label: str, token: object) -> OperationFailed:
    """The error for a token that holds no cluster wrapping key."""
    return OperationFailed(
        f"no cluster wrapping key {label!r} on token {token}: run `hsm cluster init` (the "
        "security officer's ceremony) before replicating keys", reason=Reason.NO_WRAPPING_KEY,
    )


def _bool_attribute(key: Any, attribute: Attribute) -> bool:
    try:
        return bool(key[attribute])
    except p11e.AttributeTypeInvalid:
        return False


# -- the security officer's session --------------------------------------------------------


class OfficerSession:
    """A security-officer login on one token, for the ceremony. Use as a context manager.

    Every call runs inside :meth:`Module.using` (a re-initialize waits for it) and refuses
    to run in a later module generation than the login's (SoftHSM reuses handle numbers).
    ``name`` names the token in messages (the member name; the selector by default).
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

    def open(self) -> OfficerSession:
        """Log in as the security officer. A wrong SO PIN raises at once, never retried."""
        if self._session is not None:
            return self
        token = self.module.find_token(self.selector)
        with self.module.using() as generation:
            try:
                session = token.open(rw=True, so_pin=self._so_pin.reveal(),
                                     attribute_mapper=_officer_mapper())
            except p11e.PKCS11Error as exc:
                raise self._login_error(exc) from exc
        self._session, self._generation = session, generation
        log.info("security officer logged in to token %s", self.name)
        return self

    def close(self) -> None:
        """Log the security officer out (closing the session does) and forget the PIN."""
        session, self._session = self._session, None
        if session is not None and self.module.generation == self._generation:
            with self.module.using(), suppress(p11e.PKCS11Error):
                session.close()

    def __enter__(self) -> OfficerSession:
        return self.open()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _login_error(self, exc: p11e.PKCS11Error) -> HSMError:
        if isinstance(exc, _LOGGED_IN_ERRORS):
            return OperationFailed(
                f"token {self.name}: the security officer can't log in while this process "
                "holds a user login to the token (PKCS#11 login is per token per "
                "application); run the ceremony before any client opens this member, or "
                "close those clients first", reason=Reason.USER_LOGGED_IN,
            )
        if isinstance(exc, p11e.SessionReadOnlyExists):
            return OperationFailed(
                f"token {self.name}: the security officer can't log in while read-only "
                "sessions are open on the token in this process; close them first",
                reason=Reason.SESSION_READ_ONLY_EXISTS,
            )
        error = translate_error(exc, "security officer login")
        if isinstance(error, PinIncorrect):
            return PinIncorrect(f"token {self.name}: the security officer PIN was refused",
                                reason=error.reason)
        return type(error)(f"token {self.name}: {error.message}", reason=error.reason)

    @contextmanager
    def _call(self, operation: str, *, integrity: bool = False) -> Iterator[Any]:
        """Enter the module in the login's generation and translate errors; yields the
        session."""
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

    # -- the cluster wrapping key ----------------------------------------------------------

    def wrapping_key_kcv(self, label: str = CLUSTER_WRAP_LABEL) -> str | None:
        """The KCV of the cluster wrapping key on this token; None if there is none.

        A key under ``label`` that is not a trusted wrapping key as this module makes them
        raises :class:`OperationFailed` (reason ``wrapping_key_unsafe``): it is never used,
        nor replaced.
        """
        key = self._find(label)
        if key is None:
            return None
        with self._call("read wrapping key attributes"):
            attrs = key.get_attributes([
                Attribute.KEY_TYPE, Attribute.TOKEN, Attribute.SENSITIVE,
                Attribute.EXTRACTABLE, Attribute.WRAP, Attribute.UNWRAP, Attribute.ENCRYPT,
                Attribute.DECRYPT, Attribute.DERIVE, Attribute.TRUSTED,
            ])
        want = {
            Attribute.KEY_TYPE: KeyType.AES, Attribute.TOKEN: True, Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: False, Attribute.WRAP: True, Attribute.UNWRAP: True,
            Attribute.ENCRYPT: False, Attribute.DECRYPT: False, Attribute.DERIVE: False,
            Attribute.TRUSTED: True,
        }
        wrong = sorted(a.name for a, v in want.items() if attrs.get(a) != v)
        if wrong:
            raise OperationFailed(
                f"token {self.name}: the key labelled {label!r} is not a cluster wrapping key "
                f"as `hsm cluster init` makes them ({', '.join(wrong)}); it is left alone: "
                "have the security officer remove it, then run the ceremony",
                reason=Reason.WRAPPING_KEY_UNSAFE,
            )
        kcv = self._check_value(key)
        if not kcv:
            raise OperationFailed(
                f"token {self.name}: the module reports no check value for the cluster "
                "wrapping key, so copies can't be compared", reason=Reason.NO_CHECK_VALUE,
            )
        return kcv

    def create_wrapping_key(self, material: bytes | bytearray,
                            label: str = CLUSTER_WRAP_LABEL) -> str:
        """Create the cluster wrapping key from ``material``, test it, return its KCV.

        The caller has checked that no key carries ``label`` (:meth:`wrapping_key_kcv`).
        A key that fails its test is destroyed before the error is raised.
        """
        want = material_kcv(material)
        template = {
            Attribute.CLASS: _SECRET,
            Attribute.KEY_TYPE: KeyType.AES,
            # python-pkcs11 copies this into memory of its own: wiping `material` is all
            # this process can do (docs/CLUSTER-KEYS.md).
            Attribute.VALUE: bytes(material),
            Attribute.LABEL: label,
            Attribute.ID: CLUSTER_WRAP_ID,
            Attribute.TOKEN: True,
            Attribute.PRIVATE: False,  # SoftHSM: the SO can't create private objects
            Attribute.TRUSTED: True,
            Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: False,
            Attribute.MODIFIABLE: False,  # nobody can drop the unwrap template later
            Attribute.WRAP: True,
            Attribute.UNWRAP: True,
            Attribute.ENCRYPT: False,
            Attribute.DECRYPT: False,
            Attribute.SIGN: False,
            Attribute.VERIFY: False,
            Attribute.DERIVE: False,
            Attribute.UNWRAP_TEMPLATE: UNWRAP_TEMPLATE,
        }
        with self._call("create wrapping key") as session:
            key = session.create_object(template)
        try:
            self._self_test(key, material)
            kcv = self._check_value(key)
            if kcv and kcv != want:
                raise OperationFailed(
                    f"token {self.name}: the new cluster wrapping key reports kcv {kcv}, its "
                    f"material has {want}", reason=Reason.KCV_MISMATCH,
                )
        except BaseException:
            self._destroy_quietly(key, label)
            raise
        log.info("created cluster wrapping key %r on token %s (kcv %s)", label, self.name, want)
        return want

    def verify_wrapping_key(self, material: bytes | bytearray,
                            label: str = CLUSTER_WRAP_LABEL) -> None:
        """Run the creation test on an existing wrapping key: it holds ``material`` and its
        module refuses readable copies of what it unwraps."""
        key = self._find(label)
        if key is None:
            raise OperationFailed(f"token {self.name}: no cluster wrapping key {label!r}",
                                  reason=Reason.NO_WRAPPING_KEY)
        self._self_test(key, material)

    def destroy_wrapping_key(self, kcv: str, label: str = CLUSTER_WRAP_LABEL) -> bool:
        """Destroy the cluster wrapping key if its KCV is ``kcv`` (the ceremony's rollback of
        a key it created); returns whether it did."""
        key = self._find(label)
        if key is None or self._check_value(key) != kcv:
            return False
        with self._call("destroy wrapping key"):
            key.destroy()
        log.info("destroyed cluster wrapping key %r on token %s (kcv %s)", label, self.name, kcv)
        return True

    def random(self, size: int) -> bytearray:
        """``size`` bytes from the token's random number generator."""
        with self._call("generate random") as session:
            return bytearray(session.generate_random(size * 8))

    # -- internals -------------------------------------------------------------------------

    def _find(self, label: str) -> Any | None:
        with self._call("find wrapping key") as session:
            found = list(session.get_objects({Attribute.CLASS: _SECRET,
                                              Attribute.LABEL: label}))
        if len(found) > 1:
            raise OperationFailed(
                f"token {self.name}: {len(found)} secret keys are labelled {label!r}; "
                "have the security officer remove all but the cluster wrapping key",
                reason=Reason.DUPLICATE_KEY,
            )
        return found[0] if found else None

    def _check_value(self, key: Any) -> str:
        with self._call("read wrapping key check value"):
            try:
                return bytes(key[Attribute.CHECK_VALUE]).hex()
            except (p11e.AttributeTypeInvalid, p11e.AttributeSensitive):
                return ""

    def _self_test(self, key: Any, material: bytes | bytearray) -> None:
        """1. A blob made in software under ``material`` unwraps under ``key`` (the HSM holds
        that material); 2. unwrapping it into a readable key is refused (the module enforces
        CKA_UNWRAP_TEMPLATE). Session objects only, destroyed at once."""
        _check_material(material)
        sample = os.urandom(MATERIAL_BYTES)
        blob = keywrap.aes_key_wrap(material, sample)
        sealed = {Attribute.TOKEN: False, Attribute.PRIVATE: False,
                  **{kind: value for kind, value in UNWRAP_TEMPLATE}}
        try:
            with self._call("wrapping key self-test", integrity=True):
                copy = key.unwrap_key(_SECRET, KeyType.AES, blob, store=False,
                                      mechanism=Mechanism.AES_KEY_WRAP,
                                      capabilities=MechanismFlag(0), template=sealed)
        except HSMError as exc:
            if exc.transient:
                raise
            raise OperationFailed(
                f"token {self.name}: the cluster wrapping key failed its test: a blob made "
                f"under the ceremony's key material does not unwrap under it ({exc.message})",
                reason=Reason.WRAPPING_KEY_TEST_FAILED,
            ) from exc
        self._destroy_quietly(copy, "self-test key")
        readable = {Attribute.TOKEN: False, Attribute.PRIVATE: False,
                    Attribute.SENSITIVE: False, Attribute.EXTRACTABLE: True}
        with self._call("wrapping key self-test"):
            try:
                leaked = key.unwrap_key(_SECRET, KeyType.AES, blob, store=False,
                                        mechanism=Mechanism.AES_KEY_WRAP,
                                        capabilities=MechanismFlag(0), template=readable)
            except _TEMPLATE_REFUSALS:
                return
        self._destroy_quietly(leaked, "self-test key")
        raise OperationFailed(
            f"token {self.name}: the module ignores CKA_UNWRAP_TEMPLATE (it unwrapped a key "
            "under the cluster wrapping key into a readable one): anyone with the user PIN "
            "could read replicated master keys; not using this module for replication",
            reason=Reason.UNWRAP_TEMPLATE_IGNORED,
        )

    def _destroy_quietly(self, key: Any, what: str) -> None:
        try:
            with self._call(f"destroy {what}"):
                key.destroy()
        except HSMError as exc:
            log.error("token %s: could not destroy %s (%s); the security officer must "
                      "destroy it by hand", self.name, what, exc.reason)


# -- one token -----------------------------------------------------------------------------


def establish_wrapping_key(module: Module, selector: TokenSelector, so_pin: Secret,
                           material: bytearray, *, label: str = CLUSTER_WRAP_LABEL,
                           name: str | None = None) -> str:
    """Make sure the token holds the cluster wrapping key made from ``material``; its KCV.

    Idempotent: a token that already holds it (same KCV) is only tested. A token that holds
    another key under ``label`` is never overwritten: :class:`OperationFailed` (reason
    ``wrapping_key_mismatch``). The caller owns ``material`` and wipes it.
    """
    _check_material(material)
    want = material_kcv(material)
    shown = name or str(selector)
    with OfficerSession(module, selector, so_pin, name=shown) as officer:
        have = officer.wrapping_key_kcv(label)
        if have is None:
            return officer.create_wrapping_key(material, label)
        if have != want:
            raise OperationFailed(
                f"token {shown} already holds a cluster wrapping key {label!r} with kcv "
                f"{have}, not {want}; the ceremony never replaces one",
                reason=Reason.WRAPPING_KEY_MISMATCH,
            )
        officer.verify_wrapping_key(material, label)
        return have
