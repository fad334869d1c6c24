"""Master keys on one token: the template, naming, attribute policy and key check value.

A master key is AES-256, a token object, PRIVATE, SENSITIVE, not EXTRACTABLE, not
MODIFIABLE, able to ENCRYPT and DECRYPT (AES-GCM: sealing and opening data keys, direct
encryption) and nothing else, and, where the module enforces ``CKA_ALLOWED_MECHANISMS``
(probed: :attr:`hsm.pkcs11.Mechanisms.allowed_mechanisms`), allowed AES-GCM alone. It never
needs WRAP or UNWRAP: being exported means being the *target* of ``C_WrapKey``, which takes
EXTRACTABLE, not WRAP. Not MODIFIABLE, so that nobody holding the user PIN can add a
capability later (SoftHSM lets CKA_DERIVE be set on a modifiable key, and a derived key can
be readable). A *replicable* master key (made for a cluster) is EXTRACTABLE and
WRAP_WITH_TRUSTED: the HSM lets it out only wrapped under a key the security officer marked
CKA_TRUSTED (see :mod:`hsm.keys.replication`); EXTRACTABLE without WRAP_WITH_TRUSTED breaks
policy. Keys made by older versions of ``hsm`` (WRAP, UNWRAP, MODIFIABLE, no allowed
mechanisms) break it too: they are refused unless ``allow_unsafe_keys``, and
:func:`policy_problems` says what is wrong with them. Its HSM object names itself, so the
HSM alone can say which keys and versions exist:

- ``CKA_LABEL`` = ``hsm/<key id>/v<version>`` (the key id is a UUID we make);
- ``CKA_ID`` = the 16 UUID bytes followed by the version as uint32 big-endian.

The key check value (KCV) is computed inside the HSM with AES-GCM, the only mechanism a
master key may use (:meth:`hsm.pkcs11.SecretKey.kcv_gcm`: the first 3 bytes of AES-GCM of a
zero block under a zero IV), in hex: two HSMs that hold the same key show the same KCV
without revealing it, whether the key was generated there or unwrapped (SoftHSM records no
``CKA_CHECK_VALUE`` on unwrapped keys). It is not the AES-ECB check value older versions
showed (that needs AES-ECB, which master keys may no longer do).

The policy is written in the edge's typed values (:class:`~hsm.pkcs11.KeyTemplate`,
:class:`~hsm.pkcs11.Attr`, :class:`~hsm.pkcs11.Capability`), never in python-pkcs11's.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hsm.errors import (
    HSMError,
    InvalidInput,
    MechanismUnsupported,
    OperationFailed,
    Reason,
    UnsafeKey,
)
from hsm.pkcs11 import (
    AES_GCM,
    Attr,
    AttrValue,
    Capability,
    KeyClass,
    KeyTemplate,
    KeyType,
    Mechanisms,
    SecretKey,
)

__all__ = [
    "ALLOWED_MECHANISMS",
    "CAPABILITIES",
    "POLICY_ATTRIBUTES",
    "TRUST_ATTRIBUTE",
    "KeyInfo",
    "allowed_mechanisms",
    "check_attributes",
    "check_key",
    "check_version",
    "create_template",
    "key_id_bytes",
    "label_for",
    "master_kcv",
    "parse_label",
    "policy_attributes",
    "policy_problems",
]

log = logging.getLogger(__name__)

LABEL_PREFIX = "hsm/"
_LABEL = re.compile(r"^hsm/([0-9a-f-]{36})/v([1-9][0-9]{0,9})$")
MAX_VERSION = 0xFFFFFFFF  # CKA_ID carries the version as uint32
KEY_BYTES = 32  # AES-256

CAPABILITIES = Capability.ENCRYPT | Capability.DECRYPT
#: What a master key may be used with, where the module enforces CKA_ALLOWED_MECHANISMS.
ALLOWED_MECHANISMS: tuple[int, ...] = (AES_GCM,)

POLICY_ATTRIBUTES = (
    Attr.CLASS,
    Attr.KEY_TYPE,
    Attr.VALUE_LEN,
    Attr.TOKEN,
    Attr.PRIVATE,
    Attr.SENSITIVE,
    Attr.EXTRACTABLE,
    Attr.WRAP,
    Attr.UNWRAP,
    Attr.SIGN,
    Attr.VERIFY,
    Attr.DERIVE,
    Attr.MODIFIABLE,
)

# Read with POLICY_ATTRIBUTES; a module that does not know it reports none, read as false.
TRUST_ATTRIBUTE = Attr.WRAP_WITH_TRUSTED
_POLICY_READ = (*POLICY_ATTRIBUTES, TRUST_ATTRIBUTE, Attr.ALLOWED_MECHANISMS)

# What each policy attribute must say (EXTRACTABLE: see policy_problems).
_WANT: dict[Attr, AttrValue] = {
    Attr.CLASS: KeyClass.SECRET_KEY,
    Attr.KEY_TYPE: KeyType.AES,
    Attr.VALUE_LEN: KEY_BYTES,
    Attr.TOKEN: True,
    Attr.PRIVATE: True,
    Attr.SENSITIVE: True,
    Attr.EXTRACTABLE: False,
    Attr.WRAP: False,
    Attr.UNWRAP: False,
    Attr.SIGN: False,
    Attr.VERIFY: False,
    Attr.DERIVE: False,
    Attr.MODIFIABLE: False,
}
# What keys made by hsm before its master keys lost these rights break, and nothing else.
_OLDER_TEMPLATE = frozenset({"WRAP", "UNWRAP", "MODIFIABLE", "no ALLOWED_MECHANISMS"})


@dataclass(frozen=True)
class KeyInfo:
    """A master key version as the HSM knows it. No secret in here."""

    key_id: str
    version: int
    kcv: str

    def as_dict(self) -> dict[str, Any]:
        return {"key_id": self.key_id, "version": self.version, "kcv": self.kcv}


def key_id_bytes(key_id: str) -> bytes:
    """The 16 UUID bytes of ``key_id``; :class:`InvalidInput` if it is not a UUID."""
    if not isinstance(key_id, str):
        raise InvalidInput("key id must be a string (a UUID)")
    try:
        parsed = uuid.UUID(key_id)
    except ValueError:
        raise InvalidInput(f"key id {key_id[:64]!r} is not a UUID") from None
    return parsed.bytes


def check_version(version: object) -> int:
    """``version`` if it is a key version (1 to 2**32 - 1); :class:`InvalidInput` if not."""
    if type(version) is not int or not 1 <= version <= MAX_VERSION:
        raise InvalidInput(f"key version must be an integer from 1 to {MAX_VERSION}")
    return version


def label_for(key_id: str, version: int) -> str:
    return f"{LABEL_PREFIX}{key_id}/v{version}"


def parse_label(label: str) -> tuple[str, int] | None:
    match = _LABEL.match(label or "")
    if match is None:
        return None
    return match.group(1), int(match.group(2))


def allowed_mechanisms(mechanisms: Mechanisms) -> tuple[int, ...] | None:
    """:data:`ALLOWED_MECHANISMS` if the module was probed enforcing CKA_ALLOWED_MECHANISMS,
    else None (the attribute is then neither written nor required)."""
    return ALLOWED_MECHANISMS if mechanisms.allowed_mechanisms else None


def create_template(key_id: str, version: int, *, replicable: bool = False,
                    allowed: tuple[int, ...] | None = ALLOWED_MECHANISMS) -> KeyTemplate:
    """The template of master key ``key_id`` version ``version``: label and id as above,
    everything explicit, no defaults (:data:`CAPABILITIES` and nothing else, not
    MODIFIABLE, CKA_ALLOWED_MECHANISMS ``allowed`` unless None: pass
    :func:`allowed_mechanisms` of the module's probe).

    ``replicable`` adds EXTRACTABLE and WRAP_WITH_TRUSTED (both one-way: the HSM never lets
    such a key out except wrapped under a CKA_TRUSTED key).
    """
    return KeyTemplate(
        key_type=KeyType.AES, capabilities=CAPABILITIES, token=True, private=True,
        sensitive=True, extractable=bool(replicable), label=label_for(key_id, version),
        cka_id=key_id_bytes(key_id) + version.to_bytes(4, "big"),
        wrap_with_trusted=True if replicable else None, modifiable=False,
        allowed_mechanisms=allowed,
    )


def policy_attributes(key: SecretKey) -> dict[Attr, AttrValue]:
    """The policy attributes of ``key``, WRAP_WITH_TRUSTED (false where the module doesn't
    know it) and ALLOWED_MECHANISMS (absent where it doesn't); {} if the module reports
    none of them."""
    attrs = key.read(_POLICY_READ)
    if attrs:
        attrs.setdefault(TRUST_ATTRIBUTE, False)
    return attrs


def policy_problems(attrs: Mapping[Attr, AttrValue], *,
                    allowed: tuple[int, ...] | None = ALLOWED_MECHANISMS) -> list[str]:
    """What in ``attrs`` (:func:`policy_attributes`) is weaker than the master-key template:
    the names of the attributes that say otherwise (``"WRAP"``, ``"MODIFIABLE"``,
    ``"EXTRACTABLE without WRAP_WITH_TRUSTED"``...), then ``"no ALLOWED_MECHANISMS"`` or
    ``"ALLOWED_MECHANISMS beyond AES-GCM"`` when ``allowed`` (the mechanisms the module was
    probed to enforce) is not None; [] for a key that complies.

    EXTRACTABLE is accepted only together with WRAP_WITH_TRUSTED (a replicable key); a
    missing WRAP_WITH_TRUSTED reads as false.
    """
    want = dict(_WANT)
    if attrs.get(Attr.VALUE_LEN) == 0 and attrs.get(Attr.KEY_TYPE) is KeyType.AES:
        # SoftHSM 2.6 records no length on keys made by C_UnwrapKey (its issue #628); the
        # import path proves the length itself, so "not reported" is not a violation.
        want.pop(Attr.VALUE_LEN)
    if attrs.get(TRUST_ATTRIBUTE) is True and attrs.get(Attr.EXTRACTABLE) is True:
        # Replicable: it can leave the HSM only wrapped under a CKA_TRUSTED key.
        want[Attr.EXTRACTABLE] = True
    wrong = sorted(a.name for a, v in want.items() if attrs.get(a) != v)
    if Attr.EXTRACTABLE.name in wrong:
        wrong[wrong.index(Attr.EXTRACTABLE.name)] = "EXTRACTABLE without WRAP_WITH_TRUSTED"
    if allowed is not None:
        have = attrs.get(Attr.ALLOWED_MECHANISMS)
        if not isinstance(have, tuple) or not have:
            wrong.append("no ALLOWED_MECHANISMS")
        elif not set(have) <= set(allowed):
            wrong.append("ALLOWED_MECHANISMS beyond AES-GCM")
    return wrong


def check_key(key: SecretKey, label: str, *, allow_unsafe: bool,
              allowed: tuple[int, ...] | None = ALLOWED_MECHANISMS) -> None:
    """Read ``key``'s policy attributes and :func:`check_attributes` them; a key whose
    attributes can't be read at all is :class:`UnsafeKey`."""
    attrs = policy_attributes(key)
    if not attrs:
        raise UnsafeKey(f"attributes of master key {label} can't be read")
    check_attributes(attrs, label, allow_unsafe=allow_unsafe, allowed=allowed)


def check_attributes(attrs: Mapping[Attr, AttrValue], label: str, *, allow_unsafe: bool,
                     allowed: tuple[int, ...] | None = ALLOWED_MECHANISMS) -> None:
    """Refuse a key whose attributes are weaker than the master-key template
    (:func:`policy_problems`) with :class:`UnsafeKey`, unless ``allow_unsafe`` (then a
    warning is logged). The message says what is wrong and how to go on."""
    wrong = policy_problems(attrs, allowed=allowed)
    if not wrong:
        return
    message = f"master key {label} breaks policy: {', '.join(wrong)}"
    if not allow_unsafe:
        if set(wrong) <= _OLDER_TEMPLATE:
            raise UnsafeKey(
                message + " (it has rights master keys no longer get: made by an older "
                "version of hsm?); to keep using it, open with allow_unsafe_keys=True, and "
                "replace it: rotate the key, so that new data goes under a version made "
                "with the current template, and retire this version once nothing needs it")
        raise UnsafeKey(message + " (open with allow_unsafe_keys=True to use it anyway)")
    log.warning("%s; used anyway because allow_unsafe_keys is set", message)


def master_kcv(key: SecretKey, *, operation: str = "key check value") -> str:
    """The KCV of master key ``key`` (see the module docstring): AES-GCM inside the HSM
    (:meth:`~hsm.pkcs11.SecretKey.kcv_gcm`). A key that can't do AES-GCM with a chosen IV
    (not allowed to encrypt, a module that picks GCM IVs itself) falls back to its
    CKA_CHECK_VALUE; one with neither raises :class:`OperationFailed` (``no_check_value``).
    """
    try:
        return key.kcv_gcm(operation=operation)
    except HSMError as exc:
        if exc.transient:
            raise
        refused = exc
    value = key.check_value(operation=operation)
    if value:
        return value.hex()
    kind = "mechanism" if isinstance(refused, MechanismUnsupported) else "key"
    raise OperationFailed(f"no key check value: the {kind} refused AES-GCM "
                          f"({refused.reason}) and the module records no CKA_CHECK_VALUE",
                          reason=Reason.NO_CHECK_VALUE)
