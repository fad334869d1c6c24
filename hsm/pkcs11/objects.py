"""Typed key objects: what the layers above hold and say instead of python-pkcs11's objects.

- :class:`KeyClass`, :class:`KeyType`, :class:`Attr`, :class:`Capability`: the edge's enums
  for object classes, key types, attributes and key capabilities (their values are
  python-pkcs11's constants; nothing above this package sees those);
- :class:`KeyTemplate`: everything a new secret key says about itself, frozen and explicit
  (python-pkcs11 and the modules add defaults to whatever a template leaves out);
- :class:`SecretKey`: one secret-key object of one session, with the calls made on keys:
  AES-GCM inside the HSM, key wrap and unwrap, attribute reads, the key check value, destroy;
- :data:`MAPPER`: python-pkcs11's attribute mapper plus ``CKA_ALLOWED_MECHANISMS``, for
  every session this package opens.

The calls on a session (finding, generating, creating keys, random bytes) are
:mod:`hsm.pkcs11.calls`.

Every python-pkcs11 error is translated by :mod:`hsm.pkcs11.translate`. "The module does not
know this attribute, or won't reveal it" is a typed result, not an error: the attribute is
absent from what :meth:`SecretKey.read` returns, :meth:`SecretKey.check_value` is None.

A key object belongs to its session and that session's module generation: never use one
after a re-initialize (SoftHSM reuses handle numbers). No key material is ever held here,
except the value handed to :func:`hsm.pkcs11.calls.create_key` on its way into the HSM.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pkcs11
from pkcs11 import Attribute, Mechanism, MechanismFlag, ObjectClass
from pkcs11.attributes import AttributeMapper
from pkcs11.exceptions import PKCS11Error

from hsm.errors import HSMError, InvalidInput, Reason
from hsm.pkcs11.translate import translate_error, translated

__all__ = [
    "AES_GCM",
    "AES_KEY_WRAP",
    "MAPPER",
    "Attr",
    "AttrValue",
    "Capability",
    "KeyClass",
    "KeyTemplate",
    "KeyType",
    "SecretKey",
    "attribute_mapper",
    "p11_flags",
    "p11_template",
]

AES_KEY_WRAP = int(Mechanism.AES_KEY_WRAP)  # RFC 3394, CKM_AES_KEY_WRAP (0x2109)
AES_GCM = int(Mechanism.AES_GCM)  # CKM_AES_GCM (0x1087)

_GCM = Mechanism.AES_GCM
_GCMParams = pkcs11.GCMParams
_ECB = Mechanism.AES_ECB
_TAG_BITS = 128


class KeyClass(enum.Enum):
    """An object's class (``CKA_CLASS``)."""

    SECRET_KEY = ObjectClass.SECRET_KEY
    PUBLIC_KEY = ObjectClass.PUBLIC_KEY
    PRIVATE_KEY = ObjectClass.PRIVATE_KEY


class KeyType(enum.Enum):
    """A key's type (``CKA_KEY_TYPE``): the ones this package makes or imports."""

    AES = pkcs11.KeyType.AES
    GENERIC_SECRET = pkcs11.KeyType.GENERIC_SECRET


class Attr(enum.Enum):
    """The attributes this package reads or writes (``CKA_*``)."""

    CLASS = Attribute.CLASS
    TOKEN = Attribute.TOKEN
    PRIVATE = Attribute.PRIVATE
    LABEL = Attribute.LABEL
    TRUSTED = Attribute.TRUSTED
    CHECK_VALUE = Attribute.CHECK_VALUE
    KEY_TYPE = Attribute.KEY_TYPE
    ID = Attribute.ID
    SENSITIVE = Attribute.SENSITIVE
    ENCRYPT = Attribute.ENCRYPT
    DECRYPT = Attribute.DECRYPT
    WRAP = Attribute.WRAP
    UNWRAP = Attribute.UNWRAP
    SIGN = Attribute.SIGN
    VERIFY = Attribute.VERIFY
    DERIVE = Attribute.DERIVE
    VALUE_LEN = Attribute.VALUE_LEN
    EXTRACTABLE = Attribute.EXTRACTABLE
    LOCAL = Attribute.LOCAL
    NEVER_EXTRACTABLE = Attribute.NEVER_EXTRACTABLE
    ALWAYS_SENSITIVE = Attribute.ALWAYS_SENSITIVE
    MODIFIABLE = Attribute.MODIFIABLE
    WRAP_WITH_TRUSTED = Attribute.WRAP_WITH_TRUSTED
    ALLOWED_MECHANISMS = Attribute.ALLOWED_MECHANISMS


class Capability(enum.Flag):
    """What a key may be used for: each is one boolean attribute (ENCRYPT is CKA_ENCRYPT)."""

    ENCRYPT = enum.auto()
    DECRYPT = enum.auto()
    WRAP = enum.auto()
    UNWRAP = enum.auto()
    SIGN = enum.auto()
    VERIFY = enum.auto()
    DERIVE = enum.auto()


#: A value read from a key: booleans, ``VALUE_LEN`` (int), ``LABEL`` (str), ``ID`` and
#: ``CHECK_VALUE`` (bytes), ``CLASS`` and ``KEY_TYPE`` (the enums above; an int for a class
#: or type they don't name), ``ALLOWED_MECHANISMS`` (a tuple of mechanism numbers; empty:
#: the key sets no restriction).
AttrValue = bool | int | str | bytes | KeyClass | KeyType | tuple[int, ...]


# -- CKA_ALLOWED_MECHANISMS, packed by hand ----------------------------------------------------
# python-pkcs11's attribute mapper does not know it. Its value is a plain array of
# CK_MECHANISM_TYPE (CK_ULONG: C's unsigned long, struct's "L"), no inner pointers, so it is
# written and read as bytes by every session this package opens (MAPPER).

_ULONG = struct.Struct("L")


def _pack_mechanisms(value: Sequence[int]) -> bytes:
    return struct.pack(f"{len(value)}L", *(int(v) for v in value))


def _unpack_mechanisms(raw: bytes) -> tuple[int, ...]:
    count = len(raw) // _ULONG.size
    return tuple(struct.unpack(f"{count}L", raw[:count * _ULONG.size]))


def attribute_mapper() -> AttributeMapper:
    """python-pkcs11's attribute mapper plus ``CKA_ALLOWED_MECHANISMS``."""
    mapper = AttributeMapper()
    mapper.register_handler(Attribute.ALLOWED_MECHANISMS, _pack_mechanisms, _unpack_mechanisms)
    return mapper


#: The mapper of every session this package opens (read-only once made; shared).
MAPPER = attribute_mapper()

# Each capability: its boolean attribute, and python-pkcs11's flag for it.
_CAPABILITIES: tuple[tuple[Capability, Attribute, MechanismFlag], ...] = (
    (Capability.ENCRYPT, Attribute.ENCRYPT, MechanismFlag.ENCRYPT),
    (Capability.DECRYPT, Attribute.DECRYPT, MechanismFlag.DECRYPT),
    (Capability.WRAP, Attribute.WRAP, MechanismFlag.WRAP),
    (Capability.UNWRAP, Attribute.UNWRAP, MechanismFlag.UNWRAP),
    (Capability.SIGN, Attribute.SIGN, MechanismFlag.SIGN),
    (Capability.VERIFY, Attribute.VERIFY, MechanismFlag.VERIFY),
    (Capability.DERIVE, Attribute.DERIVE, MechanismFlag.DERIVE),
)
_ATTR_OF = {attr.value: attr for attr in Attr}
_CLASS_OF = {kind.value: kind for kind in KeyClass}
_TYPE_OF = {kind.value: kind for kind in KeyType}
#: The key-generation mechanism of each key type.
GENERATE = {KeyType.AES: Mechanism.AES_KEY_GEN,
             KeyType.GENERIC_SECRET: Mechanism.GENERIC_SECRET_KEY_GEN}
# What a module answers for an attribute it does not know or will not reveal.
_UNREADABLE = frozenset({Reason.ATTRIBUTE_TYPE_INVALID, Reason.ATTRIBUTE_SENSITIVE})
# SoftHSM 2.6 answers CKR_FUNCTION_FAILED for the CHECK_VALUE of some keys (its issue #570).
_NO_CHECK_VALUE = _UNREADABLE | {Reason.FUNCTION_FAILED}


@dataclass(frozen=True)
class KeyTemplate:
    """Everything a new secret key says about itself. Every capability is written (true for
    those in ``capabilities``, false for the rest), and so are TOKEN, PRIVATE, SENSITIVE and
    EXTRACTABLE. An optional attribute left at ``None`` is not written at all (the module's
    rules decide it; some modules do not know WRAP_WITH_TRUSTED or TRUSTED).

    No key material in here: :func:`create_key` takes the value separately.
    """

    key_type: KeyType
    capabilities: Capability
    token: bool
    private: bool
    sensitive: bool
    extractable: bool
    label: str = ""
    cka_id: bytes = b""
    wrap_with_trusted: bool | None = None
    trusted: bool | None = None
    modifiable: bool | None = None
    #: CKA_ALLOWED_MECHANISMS: the only mechanisms the key may be used with (None: not
    #: written; the module allows every mechanism its capabilities allow).
    allowed_mechanisms: tuple[int, ...] | None = None


def p11_template(template: KeyTemplate) -> dict[Attribute, Any]:
    """``template`` as python-pkcs11's attribute dict, without CLASS and KEY_TYPE (the call
    that makes the key adds them). For this package's edge modules only."""
    if not isinstance(template, KeyTemplate):
        raise InvalidInput(f"a key template must be a KeyTemplate, not {type(template).__name__}")
    out: dict[Attribute, Any] = {
        Attribute.TOKEN: bool(template.token),
        Attribute.PRIVATE: bool(template.private),
        Attribute.SENSITIVE: bool(template.sensitive),
        Attribute.EXTRACTABLE: bool(template.extractable),
    }
    for flag, attribute, _ in _CAPABILITIES:
        out[attribute] = flag in template.capabilities
    if template.label:
        out[Attribute.LABEL] = template.label
    if template.cka_id:
        out[Attribute.ID] = bytes(template.cka_id)
    for attribute, value in ((Attribute.WRAP_WITH_TRUSTED, template.wrap_with_trusted),
                             (Attribute.TRUSTED, template.trusted)):
        if value is not None:
            out[attribute] = bool(value)
    if template.allowed_mechanisms is not None:
        out[Attribute.ALLOWED_MECHANISMS] = tuple(int(m) for m in template.allowed_mechanisms)
    if template.modifiable is not None:
        # Last: SoftHSM 2.6 applies a C_UnwrapKey template in order and refuses every
        # attribute after MODIFIABLE=false (CKR_ATTRIBUTE_READ_ONLY). python-pkcs11 keeps
        # the order (its defaults first, then ours; MODIFIABLE is not among its defaults).
        out[Attribute.MODIFIABLE] = bool(template.modifiable)
    return out


def p11_flags(capabilities: Capability) -> MechanismFlag:
    """``capabilities`` as python-pkcs11's flags (for this package's edge modules only)."""
    flags = MechanismFlag(0)
    for flag, _, p11 in _CAPABILITIES:
        if flag in capabilities:
            flags |= p11
    return flags


def _typed(attribute: int, value: Any) -> AttrValue:
    if attribute == Attribute.CLASS:
        return _CLASS_OF.get(value, int(value))
    if attribute == Attribute.KEY_TYPE:
        return _TYPE_OF.get(value, int(value))
    if attribute == Attribute.ALLOWED_MECHANISMS:
        return tuple(int(v) for v in value)
    if isinstance(value, bool | int | str | bytes):
        return value
    return bytes(value)


class SecretKey:
    """One secret-key object of one session: the calls this package makes on keys.

    Made by :func:`find_keys`, :func:`generate_key`, :func:`create_key` and
    :meth:`unwrap`. Valid in its session's module generation only. The GCM calls are the
    data-key hot path: each is one plain call around python-pkcs11's.
    """

    __slots__ = ("_obj", "_session")

    def __init__(self, obj: Any) -> None:
        self._obj = obj
        self._session = obj.session

    # -- AES-GCM inside the HSM (hot path) ------------------------------------------------

    def encrypt_gcm(self, data: bytes, iv: bytes, aad: bytes, operation: str) -> bytes:
        """AES-GCM of ``data`` (bytes) under this key: ciphertext || 128-bit tag."""
        try:
            sealed: bytes = self._obj.encrypt(data, mechanism=_GCM,
                                              mechanism_param=_GCMParams(iv, aad, _TAG_BITS))
        except PKCS11Error as exc:
            raise translate_error(exc, operation) from exc
        return sealed

    def encrypt_gcm_random(self, size: int, iv: bytes, aad: bytes, operation: str,
                           ) -> tuple[bytes, bytes]:
        """``size`` bytes from the HSM's RNG and their AES-GCM under this key, in one call:
        ``(random bytes, ciphertext || tag)``."""
        try:
            fresh: bytes = self._session.generate_random(size * 8)  # python-pkcs11 takes bits
            sealed: bytes = self._obj.encrypt(fresh, mechanism=_GCM,
                                              mechanism_param=_GCMParams(iv, aad, _TAG_BITS))
        except PKCS11Error as exc:
            raise translate_error(exc, operation) from exc
        return fresh, sealed

    def decrypt_gcm(self, ciphertext: bytes, iv: bytes, aad: bytes, operation: str) -> bytes:
        """The plaintext of ``ciphertext || tag``, verified inside the HSM; a failed check is
        :class:`~hsm.errors.InvalidCiphertext`."""
        try:
            plaintext: bytes = self._obj.decrypt(
                ciphertext, mechanism=_GCM, mechanism_param=_GCMParams(iv, aad, _TAG_BITS))
        except PKCS11Error as exc:
            raise translate_error(exc, operation, integrity=True) from exc
        return plaintext

    # -- attributes -----------------------------------------------------------------------

    def read(self, attrs: Sequence[Attr], *, operation: str = "read key attributes",
             ) -> dict[Attr, AttrValue]:
        """The values of ``attrs`` the module reports. One it does not know or will not
        reveal (sensitive) is absent from the result; every other error raises."""
        wanted = [attr.value for attr in attrs]
        try:
            with translated(operation):
                raw = dict(self._obj.get_attributes(wanted))
        except HSMError as exc:
            if exc.reason not in _UNREADABLE:
                raise
            raw = {}
            for attribute in wanted if len(wanted) > 1 else ():
                # Some modules refuse the whole read for one attribute: read one by one.
                try:
                    with translated(operation):
                        raw.update(self._obj.get_attributes([attribute]))
                except HSMError as one:
                    if one.reason not in _UNREADABLE:
                        raise
        return {_ATTR_OF[k]: _typed(k, v) for k, v in raw.items()}

    def label(self, *, operation: str = "read key label") -> str:
        """``CKA_LABEL`` ("" if the key has none)."""
        value = self.read((Attr.LABEL,), operation=operation).get(Attr.LABEL, "")
        return str(value)

    def check_value(self, *, operation: str = "key check value") -> bytes | None:
        """``CKA_CHECK_VALUE``; None if the module has none for this key (empty, unknown or
        refused)."""
        try:
            with translated(operation):
                value = bytes(self._obj[Attribute.CHECK_VALUE])
        except HSMError as exc:
            if exc.reason in _UNREADABLE:
                return None
            raise
        return value or None

    def kcv(self, *, operation: str = "key check value") -> str:
        """The key check value in hex: ``CKA_CHECK_VALUE``, or where the module has none
        (SoftHSM leaves it empty on unwrapped keys, its issue #570) the first 3 bytes of
        AES-ECB of a zero block, computed inside the HSM."""
        try:
            with translated(operation):
                value = bytes(self._obj[Attribute.CHECK_VALUE])
        except HSMError as exc:
            if exc.reason not in _NO_CHECK_VALUE:
                raise
            value = b""
        if value:
            return value.hex()
        with translated(operation):
            block = self._obj.encrypt(bytes(16), mechanism=_ECB)
        return bytes(block[:3]).hex()

    def kcv_gcm(self, *, operation: str = "key check value") -> str:
        """A key check value that needs nothing but AES-GCM: the first 3 bytes of the AES-GCM
        encryption of a zero block under an all-zero 96-bit IV and no AAD, computed inside the
        HSM, in hex. That is AES_K(0^96 || 00000002)[:3]: a fixed function of the key
        material, the same on every HSM holding it, whatever the module records in
        CKA_CHECK_VALUE (SoftHSM leaves it empty on unwrapped keys), and computable with a key
        whose CKA_ALLOWED_MECHANISMS is AES-GCM alone (the AES-ECB check value is not).
        Reveals no more than the usual KCV (24 bits of one AES block)."""
        sealed = self.encrypt_gcm(bytes(16), bytes(12), b"", operation)
        return bytes(sealed[:3]).hex()

    # -- wrap, unwrap, destroy --------------------------------------------------------------

    def wrap(self, key: SecretKey, mechanism: int, *, operation: str = "wrap key") -> bytes:
        """``key`` wrapped under this key inside the HSM (``C_WrapKey``) with the mechanism
        numbered ``mechanism`` (AES key wrap: see :mod:`hsm.pkcs11.mechanisms`)."""
        with translated(operation):
            return bytes(self._obj.wrap_key(key._obj, mechanism=Mechanism(mechanism)))

    def unwrap(self, wrapped: bytes, mechanism: int, template: KeyTemplate, *,
               operation: str = "unwrap key", integrity: bool = True) -> SecretKey:
        """A new secret key made of ``wrapped`` unwrapped under this key inside the HSM
        (``C_UnwrapKey``), with exactly ``template``'s attributes. A blob that does not
        verify is :class:`~hsm.errors.InvalidCiphertext` (``integrity=False``: a blob
        already known to verify, so SoftHSM's GeneralError means device trouble)."""
        attrs = p11_template(template)
        with translated(operation, integrity=integrity):
            obj = self._obj.unwrap_key(
                ObjectClass.SECRET_KEY, template.key_type.value, bytes(wrapped),
                id=template.cka_id or None, label=template.label or None,
                mechanism=Mechanism(mechanism), store=template.token,
                capabilities=p11_flags(template.capabilities), template=attrs,
            )
        return SecretKey(obj)

    def destroy(self, *, operation: str = "destroy key") -> None:
        """Destroy the object (``C_DestroyObject``). Irreversible."""
        with translated(operation):
            self._obj.destroy()

    def __repr__(self) -> str:
        return f"<SecretKey handle {self._obj.handle}>"
