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
:func:`import_wrapped_key` establishes the length from the blob itself and computes the key
check value inside the HSM when the module left it empty.

Hazmat: these are building blocks for replication and key import; applications use
:func:`hsm.open`.
"""

from __future__ import annotations

import enum
import logging
import uuid
from typing import Any

from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass

from hsm.errors import (
    HSMError,
    InvalidCiphertext,
    InvalidInput,
    KeyNotFound,
    MechanismUnsupported,
    OperationFailed,
    Reason,
)
from hsm.keys.keyring import Keyring
from hsm.keys.master import (
    CAPABILITIES,
    POLICY_ATTRIBUTES,
    KeyInfo,
    check_attributes,
    create_template,
)
from hsm.pkcs11 import Mechanisms, translated

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
        return int(Mechanism.AES_KEY_WRAP)
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


def wrap_key_object(session: Any, wrapping_key: Any, key: Any, which: WrapMechanism,
                    mechanisms: Mechanisms) -> bytes:
    """Wrap ``key`` under ``wrapping_key`` inside the HSM (``C_WrapKey``); returns the blob.

    ``wrapping_key`` and ``key`` are python-pkcs11 key objects of ``session``, or the labels
    of secret keys on its token. Refuses what :func:`pkcs11_mechanism` refuses; a key whose
    length can't be known (no ``CKA_VALUE_LEN``, not AES) when that length matters: KW always,
    KWP on a module without ``kwp_any_length``. The HSM itself refuses a key that is not
    extractable (:class:`OperationFailed`, reason ``key_unextractable``).
    """
    wrapper = _resolve(session, wrapping_key, "wrapping key")
    target = _resolve(session, key, "key to wrap")
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
    mechanism = pkcs11_mechanism(which, mechanisms, length=length)
    with translated("wrap key"):
        return bytes(wrapper.wrap_key(target, mechanism=Mechanism(mechanism)))


def unwrap_key_object(session: Any, unwrapping_key: Any, wrapped: bytes, which: WrapMechanism,
                      mechanisms: Mechanisms, *, key_type: KeyType, label: str, key_id: bytes,
                      token: bool, extractable: bool = False, sensitive: bool = True,
                      capabilities: MechanismFlag = CAPABILITIES) -> Any:
    """Unwrap ``wrapped`` into a new secret-key object (``C_UnwrapKey``) and return it.

    ``unwrapping_key`` is a key object of ``session`` or the label of a secret key on its
    token. The template is explicit (python-pkcs11 adds no SENSITIVE/PRIVATE defaults):
    PRIVATE, SENSITIVE and not EXTRACTABLE unless asked otherwise, exactly ``capabilities``
    (ENCRYPT/DECRYPT/WRAP/UNWRAP by default; SIGN, VERIFY, DERIVE only if listed), a token
    object if ``token``. ``extractable=True`` / ``sensitive=False`` are for tests and
    replication under a trusted key, never for master keys.

    Refuses a blob whose length no KW/KWP output can have, a wrong unwrapping key or a
    tampered blob (all :class:`InvalidCiphertext`), and what :func:`pkcs11_mechanism`
    refuses. The returned object belongs to ``session`` and its module generation.
    """
    data = _blob_bytes(wrapped, which)
    mechanism = pkcs11_mechanism(which, mechanisms)
    unwrapper = _resolve(session, unwrapping_key, "unwrapping key")
    template = {
        Attribute.PRIVATE: True,
        Attribute.SENSITIVE: bool(sensitive),
        Attribute.EXTRACTABLE: bool(extractable),
    }
    return _unwrap(unwrapper, data, mechanism, key_type=key_type, label=label, key_id=key_id,
                   token=token, capabilities=capabilities, template=template)


def import_wrapped_key(keyring: Keyring, wrapped: bytes, *, wrapping_key_label: str,
                       which: WrapMechanism = WrapMechanism.KWP) -> KeyInfo:
    """Import AES-256 key material wrapped under a key already on the token as a new master key.

    The wrapping key is the secret key labelled ``wrapping_key_label`` on the keyring's token
    (the imported key is only as secret as that key, which whoever wrapped the material also
    holds). The new key gets a new UUID key id, version 1, the master-key label and id, and
    the master-key template: token object, PRIVATE, SENSITIVE, not EXTRACTABLE, capabilities
    :data:`hsm.keys.master.CAPABILITIES`. It is checked against the master-key policy before
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
    label, cka_id, template = create_template(key_id, 1)
    with keyring.pool.session() as lease:
        try:
            unwrapper = _find_secret(lease.session, wrapping_key_label, "wrapping key")
        except KeyNotFound:
            keyring.pool.check_token(lease)  # an empty search may mean a lost token
            raise
        obj = _unwrap(unwrapper, data, mechanism, key_type=KeyType.AES, label=label,
                      key_id=cka_id, token=True, capabilities=CAPABILITIES, template=template)
        try:
            kcv = _verify_imported(obj, label)
        except BaseException:
            _destroy_quietly(obj, label)
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


def _unwrap(unwrapper: Any, data: bytes, mechanism: int, *, key_type: KeyType, label: str,
            key_id: bytes, token: bool, capabilities: MechanismFlag,
            template: dict[Attribute, Any]) -> Any:
    if not isinstance(key_type, KeyType):
        raise InvalidInput(f"key_type must be a pkcs11.KeyType, not {type(key_type).__name__}")
    with translated("unwrap key", integrity=True):
        return unwrapper.unwrap_key(
            ObjectClass.SECRET_KEY, key_type, data, id=key_id, label=label,
            mechanism=Mechanism(mechanism), store=bool(token), capabilities=capabilities,
            template={**template, Attribute.TOKEN: bool(token)},
        )


def _resolve(session: Any, key: Any, role: str) -> Any:
    if isinstance(key, str):
        return _find_secret(session, key, role)
    return key


def _find_secret(session: Any, label: str, role: str) -> Any:
    with translated(f"find {role}"):
        found = list(session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY,
                                          Attribute.LABEL: label}))
    if not found:
        raise KeyNotFound(f"no {role} labelled {label!r} on the token")
    if len(found) > 1:
        raise OperationFailed(f"{len(found)} secret keys are labelled {label!r}; refusing to "
                              "guess which is the " + role, reason=Reason.DUPLICATE_KEY)
    return found[0]


def _material_length(key: Any) -> tuple[int | None, bool]:
    """``(bytes of key material a wrap would encrypt, or None if unknown; is it AES)``."""
    with translated("read key attributes"):
        attrs = key.get_attributes([Attribute.CLASS, Attribute.KEY_TYPE, Attribute.VALUE_LEN])
    if attrs.get(Attribute.CLASS) != ObjectClass.SECRET_KEY:
        return None, False  # a private key wraps as its PKCS#8 encoding: length unknown here
    value_len = attrs.get(Attribute.VALUE_LEN)
    aes = attrs.get(Attribute.KEY_TYPE) == KeyType.AES
    if isinstance(value_len, int) and value_len > 0:
        return value_len, aes
    return None, aes  # SoftHSM reads 0 on keys made by C_UnwrapKey (its issue #628)


def _kcv(obj: Any) -> str:
    """The key check value, computed inside the HSM when the module left CKA_CHECK_VALUE empty."""
    with translated("key check value"):
        return Keyring._kcv(obj)


def _verify_imported(obj: Any, label: str) -> str:
    """Check an imported key against the master-key policy; return its KCV."""
    with translated("read key attributes"):
        attrs = dict(obj.get_attributes(list(POLICY_ATTRIBUTES)))
    if not attrs.get(Attribute.VALUE_LEN):
        # The module did not record the length (SoftHSM 2.6, issue #628). A 40-byte blob
        # holds 32 bytes under KW and 25 to 32 under KWP; AES-ECB accepts only 16, 24 or 32:
        # if the HSM computes a check value with the key, it is 32 bytes.
        try:
            kcv = _kcv(obj)
        except HSMError as exc:
            if exc.transient:
                raise
            raise InvalidInput("the unwrapped key material is not an AES-256 key") from None
        attrs[Attribute.VALUE_LEN] = 32
        check_attributes(attrs, label, allow_unsafe=False)
        return kcv
    if attrs.get(Attribute.VALUE_LEN) != 32 and attrs.get(Attribute.KEY_TYPE) == KeyType.AES:
        raise InvalidInput("the unwrapped key material is not an AES-256 key")
    check_attributes(attrs, label, allow_unsafe=False)
    return _kcv(obj)


def _destroy_quietly(obj: Any, label: str) -> None:
    try:
        with translated("destroy rejected key"):
            obj.destroy()
    except HSMError as exc:
        log.error("could not destroy rejected imported key %s (%s); destroy it by hand",
                  label, exc.reason)
