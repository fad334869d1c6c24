"""Key-object wrap and unwrap: moving keys between tokens and importing customer keys.

``C_WrapKey`` / ``C_UnwrapKey`` with AES key wrap, either RFC 3394 (:attr:`WrapMechanism.KW`)
or RFC 5649 with padding (:attr:`WrapMechanism.KWP`). The key material never passes through
this process: the HSM encrypts a key object under a wrapping key, or decrypts a blob straight
into a new key object.

The PKCS#11 mechanism number for KWP is whatever :func:`hsm.pkcs11.probe` found RFC 5649
output under (the spec's ``CKM_AES_KEY_WRAP_KWP`` 0x210B, or ``CKM_AES_KEY_WRAP_PAD`` 0x210A
on SoftHSM 2.6). SoftHSM zero-pads key material to a multiple of 8 bytes *before* padded
wrapping, so for other lengths its output is not RFC 5649 (``Mechanisms.kwp_any_length`` is
False): wrapping such a key is refused rather than producing a blob no other HSM would open.
Unwrapping is not affected (the blob's own length indicator governs; SoftHSM 2.6.1 unwraps
RFC 5649 blobs of any length correctly, checked against the NIST KWP vectors).

Two SoftHSM 2.6.1 quirks meet keys made by ``C_UnwrapKey``: they read back
``CKA_VALUE_LEN = 0`` (SoftHSM issue #628) and an empty ``CKA_CHECK_VALUE`` (issue #570).
:func:`import_wrapped_key` establishes the length from the blob itself, and the key check
value of a master key is computed inside the HSM with AES-GCM
(:func:`hsm.keys.master.master_kcv`).

Hazmat: these are building blocks for replication and key import; applications use
:func:`hsm.open`.
"""

from __future__ import annotations

import enum
import logging
import uuid
from typing import Protocol

from hsm.errors import (
    HSMError,
    InvalidCiphertext,
    InvalidInput,
    KeyNotFound,
    MechanismUnsupported,
    OperationFailed,
    Reason,
)
from hsm.keys.master import (
    CAPABILITIES,
    KEY_BYTES,
    KeyInfo,
    allowed_mechanisms,
    check_attributes,
    create_template,
    master_kcv,
    policy_attributes,
)
from hsm.pkcs11 import (
    AES_KEY_WRAP,
    Attr,
    Capability,
    KeyClass,
    KeyTemplate,
    KeyType,
    Lease,
    Mechanisms,
    SecretKey,
    SessionPool,
)

__all__ = [
    "WrapMechanism",
    "import_wrapped_key",
    "pkcs11_mechanism",
    "unwrap_key_object",
    "wrap_key_object",
]

log = logging.getLogger(__name__)

_AES_256_WRAPPED_LEN = 40  # 32 bytes of key + 8 bytes of integrity block, under KW and KWP


class WrapMechanism(enum.Enum):
    """Which AES key wrap: RFC 3394 (``KW``) or RFC 5649, with padding (``KWP``)."""

    KW = "kw"
    KWP = "kwp"


class KeyringLike(Protocol):
    """What :func:`import_wrapped_key` needs of a keyring: its pool and probed mechanisms."""

    @property
    def pool(self) -> SessionPool: ...

    @property
    def mechanisms(self) -> Mechanisms: ...


def pkcs11_mechanism(which: WrapMechanism, mechanisms: Mechanisms, *,
                     length: int | None = None) -> int:
    """The PKCS#11 mechanism number for ``which`` on a module that was probed as ``mechanisms``.

    ``length`` is the size in bytes of the key material to wrap, when wrapping and known.
    Refuses (:class:`MechanismUnsupported`) when the module has no RFC 3394 / RFC 5649 key
    wrap, and KWP of a length that is not a multiple of 8 on a module whose padded wrap is
    not RFC 5649 for such lengths (``kwp_any_length`` False: SoftHSM zero-pads first).
    Refuses (:class:`InvalidInput`) KW of a length RFC 3394 can't wrap (not a multiple of 8,
    or under 16 bytes): use KWP for those.
    """
    if not isinstance(which, WrapMechanism):
        raise InvalidInput(f"wrap mechanism must be a WrapMechanism, not {type(which).__name__}")
    if which is WrapMechanism.KW:
        if not mechanisms.aes_key_wrap:
            raise MechanismUnsupported(
                "this module does not implement AES key wrap (RFC 3394, CKM_AES_KEY_WRAP)"
            )
        if length is not None and (length % 8 or length < 16):
            raise InvalidInput(
                f"AES key wrap (RFC 3394) needs a multiple of 8 bytes, at least 16; the key "
                f"has {length} bytes (use KWP)"
            )
        return AES_KEY_WRAP
    number = mechanisms.aes_key_wrap_pad
    if number is None:
        raise MechanismUnsupported(
            "this module does not implement AES key wrap with padding (RFC 5649) under "
            "CKM_AES_KEY_WRAP_KWP or CKM_AES_KEY_WRAP_PAD"
        )
    if length is not None and length % 8 and not mechanisms.kwp_any_length:
        raise MechanismUnsupported(
            f"this module's padded key wrap (0x{number:X}) is RFC 5649 only for key lengths "
            f"that are a multiple of 8 bytes; the key has {length} bytes"
        )
    return number


def wrap_key_object(lease: Lease, wrapping_key: SecretKey | str, key: SecretKey | str,
                    which: WrapMechanism, mechanisms: Mechanisms) -> bytes:
    """Wrap ``key`` under ``wrapping_key`` inside the HSM (``C_WrapKey``); returns the blob.

    ``wrapping_key`` and ``key`` are key objects of ``lease``'s session, or the labels of
    secret keys on its token. Refuses what
    :func:`pkcs11_mechanism` refuses; a key whose length can't be known (no
    ``CKA_VALUE_LEN``, not AES) when that length matters: KW always, KWP on a module without
    ``kwp_any_length``. The HSM itself refuses a key that is not extractable
    (:class:`OperationFailed`, reason ``key_unextractable``).
    """
    wrapper = _resolve(lease, wrapping_key, "wrapping key")
    target = _resolve(lease, key, "key to wrap")
    length, aes = _material_length(target)
    # Every AES key length is a multiple of 8 and at least 16: fine for KW and KWP alike.
    if length is None and not aes and (which is WrapMechanism.KW
                                       or not mechanisms.kwp_any_length):
        if which is WrapMechanism.KW:
            raise InvalidInput("AES key wrap (RFC 3394) needs a key of known length; use KWP")
        raise MechanismUnsupported(
            "the key's length can't be read, and this module's padded key wrap is RFC 5649 "
            "only for lengths that are a multiple of 8 bytes"
        )
    return wrapper.wrap(target, pkcs11_mechanism(which, mechanisms, length=length))


def unwrap_key_object(lease: Lease, unwrapping_key: SecretKey | str, wrapped: bytes,
                      which: WrapMechanism, mechanisms: Mechanisms, *, key_type: KeyType,
                      label: str, key_id: bytes, token: bool, extractable: bool = False,
                      sensitive: bool = True,
                      capabilities: Capability = CAPABILITIES) -> SecretKey:
    """Unwrap ``wrapped`` into a new secret-key object (``C_UnwrapKey``) and return it.

    ``unwrapping_key`` is a key object of ``lease``'s session or the label of a secret key
    on its token. The template is explicit (python-pkcs11 adds no SENSITIVE/PRIVATE
    defaults): PRIVATE, SENSITIVE and not EXTRACTABLE unless asked otherwise, exactly
    ``capabilities`` (ENCRYPT/DECRYPT by default; WRAP, UNWRAP, SIGN, VERIFY, DERIVE only if
    listed), a token object if ``token``. ``extractable=True`` / ``sensitive=False`` are for
    tests and replication under a trusted key, never for master keys.

    Refuses a blob whose length no KW/KWP output can have, a wrong unwrapping key or a
    tampered blob (all :class:`InvalidCiphertext`), and what :func:`pkcs11_mechanism`
    refuses. The returned object belongs to ``lease``'s session and its module generation.
    """
    data = _blob_bytes(wrapped, which)
    mechanism = pkcs11_mechanism(which, mechanisms)
    if not isinstance(key_type, KeyType):
        raise InvalidInput(f"key_type must be a hsm.pkcs11.KeyType, not {type(key_type).__name__}")
    unwrapper = _resolve(lease, unwrapping_key, "unwrapping key")
    template = KeyTemplate(key_type=key_type, capabilities=capabilities, token=bool(token),
                           private=True, sensitive=bool(sensitive),
                           extractable=bool(extractable), label=label, cka_id=key_id)
    return unwrapper.unwrap(data, mechanism, template)


def import_wrapped_key(keyring: KeyringLike, wrapped: bytes, *, wrapping_key_label: str,
                       which: WrapMechanism = WrapMechanism.KWP) -> KeyInfo:
    """Import AES-256 key material wrapped under a key already on the token as a new master key.

    The wrapping key is the secret key labelled ``wrapping_key_label`` on the keyring's token
    (the imported key is only as secret as that key, which whoever wrapped the material also
    holds). The new key gets a new UUID key id, version 1, the master-key label and id, and
    the master-key template: token object, PRIVATE, SENSITIVE, not EXTRACTABLE, not
    MODIFIABLE, capabilities :data:`hsm.keys.master.CAPABILITIES`, AES-GCM only where the
    module enforces CKA_ALLOWED_MECHANISMS. It is checked against the master-key policy before
    it is returned; a key that fails any check is destroyed.

    Refuses: a blob that is not 40 bytes (:class:`InvalidInput`: AES-256 wraps to 40 bytes),
    a missing or ambiguous wrapping key (:class:`KeyNotFound`, :class:`OperationFailed`), a
    wrong wrapping key or a tampered blob (:class:`InvalidCiphertext`), material that is not
    an AES-256 key (:class:`InvalidInput`), a key the module made against the template
    (:class:`~hsm.errors.UnsafeKey`).
    """
    data = _blob_bytes(wrapped, which)
    if len(data) != _AES_256_WRAPPED_LEN:
        raise InvalidInput(
            f"an AES-256 key wraps to {_AES_256_WRAPPED_LEN} bytes; got {len(data)}"
        )
    if not isinstance(wrapping_key_label, str) or not wrapping_key_label:
        raise InvalidInput("wrapping_key_label must be a non-empty string")
    mechanism = pkcs11_mechanism(which, keyring.mechanisms)
    key_id = str(uuid.uuid4())
    allowed = allowed_mechanisms(keyring.mechanisms)
    template = create_template(key_id, 1, allowed=allowed)
    with keyring.pool.session() as lease:
        try:
            unwrapper = _find_secret(lease, wrapping_key_label, "wrapping key")
        except KeyNotFound:
            keyring.pool.check_token(lease)  # an empty search may mean a lost token
            raise
        key = unwrapper.unwrap(data, mechanism, template)
        try:
            kcv = _verify_imported(key, template.label, allowed)
        except BaseException:
            _destroy_quietly(key, template.label)
            raise
    log.info("imported master key %s version 1 (kcv %s) under wrapping key %r",
             key_id, kcv, wrapping_key_label)
    return KeyInfo(key_id, 1, kcv)


# -- internals ------------------------------------------------------------------------------


def _blob_bytes(wrapped: object, which: WrapMechanism) -> bytes:
    if not isinstance(wrapped, bytes | bytearray | memoryview):
        raise InvalidInput(f"wrapped key must be bytes, not {type(wrapped).__name__}")
    data = bytes(wrapped)
    shortest = 24 if which is WrapMechanism.KW else 16
    if len(data) % 8 or len(data) < shortest:
        raise InvalidCiphertext("ciphertext does not verify", reason=Reason.WRAPPED_KEY_LENGTH)
    return data


def _resolve(lease: Lease, key: SecretKey | str, role: str) -> SecretKey:
    if isinstance(key, str):
        return _find_secret(lease, key, role)
    return key


def _find_secret(lease: Lease, label: str, role: str) -> SecretKey:
    found = lease.find_keys(label, operation=f"find {role}")
    if not found:
        raise KeyNotFound(f"no {role} labelled {label!r} on the token")
    if len(found) > 1:
        raise OperationFailed(f"{len(found)} secret keys are labelled {label!r}; refusing to "
                              "guess which is the " + role, reason=Reason.DUPLICATE_KEY)
    return found[0]


def _material_length(key: SecretKey) -> tuple[int | None, bool]:
    """``(bytes of key material a wrap would encrypt, or None if unknown; is it AES)``."""
    attrs = key.read((Attr.CLASS, Attr.KEY_TYPE, Attr.VALUE_LEN))
    if attrs.get(Attr.CLASS) is not KeyClass.SECRET_KEY:
        return None, False  # a private key wraps as its PKCS#8 encoding: length unknown here
    value_len = attrs.get(Attr.VALUE_LEN)
    aes = attrs.get(Attr.KEY_TYPE) is KeyType.AES
    if type(value_len) is int and value_len > 0:
        return value_len, aes
    return None, aes  # SoftHSM reads 0 on keys made by C_UnwrapKey (its issue #628)


def _verify_imported(key: SecretKey, label: str, allowed: tuple[int, ...] | None) -> str:
    """Check an imported key against the master-key policy; return its KCV."""
    attrs = policy_attributes(key)
    if not attrs.get(Attr.VALUE_LEN):
        # The module did not record the length (SoftHSM 2.6, issue #628). A 40-byte blob
        # holds 32 bytes under KW and 25 to 32 under KWP; AES accepts only 16, 24 or 32:
        # if the HSM computes a check value with the key, it is 32 bytes.
        try:
            kcv = key.kcv_gcm()
        except HSMError as exc:
            if exc.transient:
                raise
            raise InvalidInput("the unwrapped key material is not an AES-256 key") from None
        attrs[Attr.VALUE_LEN] = KEY_BYTES
        check_attributes(attrs, label, allow_unsafe=False, allowed=allowed)
        return kcv
    if attrs.get(Attr.VALUE_LEN) != KEY_BYTES and attrs.get(Attr.KEY_TYPE) is KeyType.AES:
        raise InvalidInput("the unwrapped key material is not an AES-256 key")
    check_attributes(attrs, label, allow_unsafe=False, allowed=allowed)
    return master_kcv(key)


def _destroy_quietly(key: SecretKey, label: str) -> None:
    try:
        key.destroy(operation="destroy rejected key")
    except HSMError as exc:
        log.error("could not destroy rejected imported key %s (%s); destroy it by hand",
                  label, exc.reason)
