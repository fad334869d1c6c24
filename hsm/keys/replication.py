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
under it must be SENSITIVE, WRAP_WITH_TRUSTED, not DERIVE and not MODIFIABLE. Without that,
anyone holding the user PIN could unwrap an exported master key into a copy that is *not*
sensitive and read it in plaintext, or into a modifiable one, set CKA_DERIVE on it and derive
a readable key (measured on SoftHSM 2.6.1, which enforces the template). Wrapping keys made
by ceremonies before MODIFIABLE joined the template lack that line (it can't be added to
an existing key: they are not modifiable either); `hsm cluster init` on a fresh token makes
the new one. The security
officer's session itself (login, and the calls made as the SO, including writing that
template) is the edge's :class:`hsm.pkcs11.SecurityOfficer`; this module holds the policy:
what the key is, what it must say about itself, and how it is tested.

After creating the key, the SO session tests it: a blob made in software under the material
must unwrap under it (the HSM holds that material), and unwrapping into a readable key must
be refused (the module enforces the unwrap template). A key that fails is destroyed.

Login is per token per application (FACTS): if this process holds a user login on the token
(an open client or session pool), the SO can't log in (``AnotherUserAlreadyLoggedIn``), and
while the SO is logged in no user can. Run the ceremony before any client opens the member.

Hazmat: the ceremony and :class:`hsm.keys.Keyring`'s export/import use this.
"""

from __future__ import annotations

import logging
import os
from types import TracebackType

from cryptography.hazmat.primitives import keywrap
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from hsm.errors import HSMError, InvalidInput, OperationFailed, Reason
from hsm.pkcs11 import (
    AES_KEY_WRAP,
    Attr,
    AttrValue,
    Capability,
    KeyTemplate,
    KeyType,
    Lease,
    Module,
    Secret,
    SecretKey,
    SecurityOfficer,
    TokenSelector,
)

__all__ = [
    "CLUSTER_WRAP_ID",
    "CLUSTER_WRAP_LABEL",
    "MATERIAL_BYTES",
    "UNWRAP_TEMPLATE",
    "OfficerSession",
    "establish_wrapping_key",
    "find_wrapping_key",
    "material_kcv",
    "no_wrapping_key",
    "wrapping_key_template",
]

log = logging.getLogger(__name__)

CLUSTER_WRAP_LABEL = "hsm/cluster-wrap"
CLUSTER_WRAP_ID = b"hsm/cluster-wrap"
MATERIAL_BYTES = 32  # AES-256

# What every key unwrapped under the cluster wrapping key must say about itself. Not
# MODIFIABLE: on a modifiable copy, whoever holds the user PIN could set CKA_DERIVE afterwards
# (SoftHSM allows it) and derive a key they can read.
UNWRAP_TEMPLATE: tuple[tuple[Attr, bool], ...] = (
    (Attr.SENSITIVE, True),
    (Attr.WRAP_WITH_TRUSTED, True),
    (Attr.DERIVE, False),
    (Attr.MODIFIABLE, False),
)

# What a cluster wrapping key found on a token must say about itself to be used.
_REQUIRED: dict[Attr, AttrValue] = {
    Attr.KEY_TYPE: KeyType.AES, Attr.TOKEN: True, Attr.SENSITIVE: True,
    Attr.EXTRACTABLE: False, Attr.WRAP: True, Attr.UNWRAP: True, Attr.ENCRYPT: False,
    Attr.DECRYPT: False, Attr.DERIVE: False, Attr.TRUSTED: True,
}

# What a module answers when an unwrap template conflicts with the caller's template.
_TEMPLATE_REFUSALS = frozenset({
    Reason.TEMPLATE_INCONSISTENT,
    Reason.TEMPLATE_INCOMPLETE,
    Reason.ATTRIBUTE_VALUE_INVALID,
})

# The self-test's session keys: one the unwrap template allows, one it must refuse.
_SEALED_COPY = KeyTemplate(key_type=KeyType.AES, capabilities=Capability(0), token=False,
                           private=False, sensitive=True, extractable=False,
                           wrap_with_trusted=True, modifiable=False)
_READABLE_COPY = KeyTemplate(key_type=KeyType.AES, capabilities=Capability(0), token=False,
                             private=False, sensitive=False, extractable=True)


def wrapping_key_template(label: str = CLUSTER_WRAP_LABEL) -> KeyTemplate:
    """The cluster wrapping key as the ceremony creates it: AES-256, a token object, TRUSTED,
    WRAP and UNWRAP only, SENSITIVE, not EXTRACTABLE, not MODIFIABLE (nobody can drop the
    unwrap template later), PRIVATE=false (SoftHSM's SO can't create private objects)."""
    return KeyTemplate(
        key_type=KeyType.AES, capabilities=Capability.WRAP | Capability.UNWRAP, token=True,
        private=False, sensitive=True, extractable=False, label=label,
        cka_id=CLUSTER_WRAP_ID, trusted=True, modifiable=False,
    )


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


def find_wrapping_key(lease: Lease, label: str = CLUSTER_WRAP_LABEL) -> SecretKey | None:
    """The trusted wrapping key labelled ``label`` in ``lease``'s token, or None if absent.

    Raises :class:`OperationFailed` if several keys carry the label, or if the one that does
    is not marked CKA_TRUSTED (anyone with the user PIN can create a key under any label;
    only the security officer can make a trusted one).
    """
    found = lease.find_keys(label, operation="find wrapping key")
    if not found:
        return None
    if len(found) > 1:
        raise OperationFailed(f"{len(found)} secret keys are labelled {label!r}; refusing to "
                              "guess which is the cluster wrapping key",
                              reason=Reason.DUPLICATE_KEY)
    key = found[0]
    trusted = key.read((Attr.TRUSTED,), operation="read wrapping key attributes")
    if trusted.get(Attr.TRUSTED) is not True:
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


# -- the ceremony on one token -----------------------------------------------------------------


class OfficerSession:
    """The cluster wrapping key on one token, in a security-officer login (the edge's
    :class:`~hsm.pkcs11.SecurityOfficer`). Use as a context manager.

    ``name`` names the token in messages (the member name; the selector by default).
    """

    def __init__(self, module: Module, selector: TokenSelector, so_pin: Secret, *,
                 name: str | None = None) -> None:
        self._officer = SecurityOfficer(module, selector, so_pin, name=name)
        self.module = module
        self.selector = selector
        self.name = self._officer.name

    # -- life cycle ------------------------------------------------------------------------

    def open(self) -> OfficerSession:
        """Log in as the security officer. A wrong SO PIN raises at once, never retried."""
        self._officer.open()
        return self

    def close(self) -> None:
        """Log the security officer out (closing the session does)."""
        self._officer.close()

    def __enter__(self) -> OfficerSession:
        return self.open()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

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
        attrs = self._officer.read(key, tuple(_REQUIRED),
                                   operation="read wrapping key attributes")
        wrong = sorted(a.name for a, v in _REQUIRED.items() if attrs.get(a) != v)
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
        # python-pkcs11 copies the material into memory of its own: wiping `material` is all
        # this process can do (docs/CLUSTER-KEYS.md).
        key = self._officer.create_key(wrapping_key_template(label), material,
                                       unwrap_template=UNWRAP_TEMPLATE,
                                       operation="create wrapping key")
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
        self._officer.destroy(key, operation="destroy wrapping key")
        log.info("destroyed cluster wrapping key %r on token %s (kcv %s)", label, self.name, kcv)
        return True

    def random(self, size: int) -> bytearray:
        """``size`` bytes from the token's random number generator."""
        return self._officer.random(size)

    # -- internals -------------------------------------------------------------------------

    def _find(self, label: str) -> SecretKey | None:
        found = self._officer.find_keys(label, operation="find wrapping key")
        if len(found) > 1:
            raise OperationFailed(
                f"token {self.name}: {len(found)} secret keys are labelled {label!r}; "
                "have the security officer remove all but the cluster wrapping key",
                reason=Reason.DUPLICATE_KEY,
            )
        return found[0] if found else None

    def _check_value(self, key: SecretKey) -> str:
        value = self._officer.check_value(key, operation="read wrapping key check value")
        return value.hex() if value else ""

    def _self_test(self, key: SecretKey, material: bytes | bytearray) -> None:
        """1. A blob made in software under ``material`` unwraps under ``key`` (the HSM holds
        that material); 2. unwrapping it into a readable key is refused (the module enforces
        CKA_UNWRAP_TEMPLATE). Session objects only, destroyed at once."""
        _check_material(material)
        sample = os.urandom(MATERIAL_BYTES)
        blob = keywrap.aes_key_wrap(material, sample)
        try:
            copy = self._officer.unwrap(key, blob, AES_KEY_WRAP, _SEALED_COPY,
                                        operation="wrapping key self-test")
        except HSMError as exc:
            if exc.transient:
                raise
            raise OperationFailed(
                f"token {self.name}: the cluster wrapping key failed its test: a blob made "
                f"under the ceremony's key material does not unwrap under it ({exc.message})",
                reason=Reason.WRAPPING_KEY_TEST_FAILED,
            ) from exc
        self._destroy_quietly(copy, "self-test key")
        try:
            leaked = self._officer.unwrap(key, blob, AES_KEY_WRAP, _READABLE_COPY,
                                          operation="wrapping key self-test", integrity=False)
        except HSMError as exc:
            if exc.reason in _TEMPLATE_REFUSALS:
                return
            raise
        self._destroy_quietly(leaked, "self-test key")
        raise OperationFailed(
            f"token {self.name}: the module ignores CKA_UNWRAP_TEMPLATE (it unwrapped a key "
            "under the cluster wrapping key into a readable one): anyone with the user PIN "
            "could read replicated master keys; not using this module for replication",
            reason=Reason.UNWRAP_TEMPLATE_IGNORED,
        )

    def _destroy_quietly(self, key: SecretKey, what: str) -> None:
        try:
            self._officer.destroy(key, operation=f"destroy {what}")
        except HSMError as exc:
            log.error("token %s: could not destroy %s (%s); the security officer must "
                      "destroy it by hand", self.name, what, exc.reason)

    def __repr__(self) -> str:
        return f"<OfficerSession token {self.name}>"


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
