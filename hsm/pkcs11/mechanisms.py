"""Which of the mechanisms we use a module really implements, found by trying them.

``C_GetMechanismInfo`` flags can't be trusted (SoftHSM returns garbage for several AES
mechanisms), so :func:`probe` runs each mechanism on throw-away session keys and compares
the output with ``cryptography``'s implementation of the same RFC:

- AES key wrap, RFC 3394 (``CKM_AES_KEY_WRAP``);
- padded key wrap, RFC 5649, under whichever number the module really implements:
  ``CKM_AES_KEY_WRAP_KWP`` (0x210B, the spec's) or ``CKM_AES_KEY_WRAP_PAD`` (0x210A, what
  SoftHSM 2.6 gives RFC 5649 output under). ``kwp_any_length`` says whether it stays
  RFC 5649 for lengths that are not a multiple of 8 (SoftHSM zero-pads first: it doesn't);
- AES-GCM, and whether the caller may choose the IV (SoftHSM) or the HSM must (CloudHSM);
- whether the module enforces ``CKA_ALLOWED_MECHANISMS``: a session key allowed AES-GCM
  alone must still do AES-GCM and be refused AES-ECB (SoftHSM 2.6: it is).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import asdict, dataclass
from typing import Any

import pkcs11
import pkcs11.exceptions as p11e
from cryptography.hazmat.primitives import keywrap
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass

from hsm.errors import Reason
from hsm.pkcs11.translate import translate_error, translated

__all__ = ["KWP_MECHANISMS", "Mechanisms", "probe"]

KWP_MECHANISMS = (0x210B, 0x210A)  # CKM_AES_KEY_WRAP_KWP, CKM_AES_KEY_WRAP_PAD


@dataclass(frozen=True)
class Mechanisms:
    """What :func:`probe` found on one module."""

    aes_key_wrap: bool
    aes_key_wrap_pad: int | None  # the mechanism number giving RFC 5649, or None
    kwp_any_length: bool
    aes_gcm: bool
    gcm_iv: str  # "caller": we pick IVs; "hsm": the module insists on its own; "" no GCM
    #: The module refuses a key a mechanism its CKA_ALLOWED_MECHANISMS does not list.
    allowed_mechanisms: bool = False

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        pad = self.aes_key_wrap_pad
        out["aes_key_wrap_pad"] = None if pad is None else f"0x{pad:X}"
        return out


def _secret(session: Any, value: bytes, *, aes: bool, wrap: bool = False) -> Any:
    return session.create_object({
        Attribute.CLASS: ObjectClass.SECRET_KEY,
        Attribute.KEY_TYPE: KeyType.AES if aes else KeyType.GENERIC_SECRET,
        Attribute.VALUE: value,
        Attribute.TOKEN: False,
        Attribute.PRIVATE: True,
        Attribute.SENSITIVE: False,
        Attribute.EXTRACTABLE: not wrap,
        Attribute.WRAP: wrap,
        Attribute.UNWRAP: wrap,
        Attribute.ENCRYPT: wrap,
        Attribute.DECRYPT: wrap,
    })


def _wraps_like(wrapper: Any, target: Any, mechanism: int, expected: bytes) -> bool:
    try:
        return bool(wrapper.wrap_key(target, mechanism=Mechanism(mechanism)) == expected)
    except (p11e.PKCS11Error, ValueError):
        return False


def probe(session: Any) -> Mechanisms:
    """Try each mechanism in ``session`` with session objects that are destroyed after.
    A mechanism the module lacks is a finding; any other error raises, translated."""
    with translated("probe mechanisms"):
        return _probe(session)


def _probe(session: Any) -> Mechanisms:
    wkey = os.urandom(32)
    made: list[Any] = []
    try:
        wrapper = _secret(session, wkey, aes=True, wrap=True)
        made.append(wrapper)
        aes_value = os.urandom(32)
        odd_value = os.urandom(20)
        aes_target = _secret(session, aes_value, aes=True)
        made.append(aes_target)
        odd_target = _secret(session, odd_value, aes=False)
        made.append(odd_target)

        kw = _wraps_like(wrapper, aes_target, Mechanism.AES_KEY_WRAP,
                         keywrap.aes_key_wrap(wkey, aes_value))
        pad = None
        for number in KWP_MECHANISMS:
            if _wraps_like(wrapper, aes_target, number,
                           keywrap.aes_key_wrap_with_padding(wkey, aes_value)):
                pad = number
                break
        any_length = pad is not None and _wraps_like(
            wrapper, odd_target, pad, keywrap.aes_key_wrap_with_padding(wkey, odd_value))
        gcm, gcm_iv = _probe_gcm(wrapper)
        allowed = gcm_iv == "caller" and _probe_allowed(session, made)
        return Mechanisms(kw, pad, any_length, gcm, gcm_iv, allowed)
    finally:
        for obj in made:
            with contextlib.suppress(p11e.PKCS11Error):
                obj.destroy()


def _probe_allowed(session: Any, made: list[Any]) -> bool:
    """Whether a key allowed AES-GCM alone still does AES-GCM and is refused AES-ECB."""
    try:
        key = session.create_object({
            Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.KEY_TYPE: KeyType.AES,
            Attribute.VALUE: os.urandom(32), Attribute.TOKEN: False, Attribute.PRIVATE: True,
            Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False, Attribute.ENCRYPT: True,
            Attribute.DECRYPT: True, Attribute.WRAP: False, Attribute.UNWRAP: False,
            Attribute.ALLOWED_MECHANISMS: (int(Mechanism.AES_GCM),),
        })
    except NotImplementedError:  # a session opened without this package's attribute mapper
        return False
    except p11e.PKCS11Error as exc:
        if translate_error(exc, "probe allowed mechanisms").transient:
            raise
        return False  # the module refuses the attribute
    made.append(key)
    if not _probe_gcm(key)[0]:
        return False
    try:
        key.encrypt(bytes(16), mechanism=Mechanism.AES_ECB)
    except p11e.PKCS11Error as exc:
        error = translate_error(exc, "probe allowed mechanisms")
        if error.transient:
            raise
        return error.reason is Reason.MECHANISM_INVALID
    return False  # AES-ECB went through: the module ignores the restriction


def _probe_gcm(key: Any) -> tuple[bool, str]:
    iv, aad, data = os.urandom(12), b"probe", os.urandom(32)
    try:
        sealed = key.encrypt(data, mechanism=Mechanism.AES_GCM,
                             mechanism_param=pkcs11.GCMParams(iv, aad, 128))
        opened = key.decrypt(sealed, mechanism=Mechanism.AES_GCM,
                             mechanism_param=pkcs11.GCMParams(iv, aad, 128))
    except p11e.PKCS11Error as exc:
        if translate_error(exc, "probe AES-GCM").reason is Reason.MECHANISM_PARAM_INVALID:
            return True, "hsm"  # the module refuses caller-chosen IVs
        return False, ""
    return (opened == data, "caller" if opened == data else "")
