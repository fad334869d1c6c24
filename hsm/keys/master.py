"""Master keys on one token: the template, naming, attribute policy and key check value.

A master key is AES-256, a token object, PRIVATE, SENSITIVE, not EXTRACTABLE, able to
ENCRYPT/DECRYPT/WRAP/UNWRAP and nothing else. A *replicable* master key (made for a cluster)
is EXTRACTABLE and WRAP_WITH_TRUSTED: the HSM lets it out only wrapped under a key the
security officer marked CKA_TRUSTED (see :mod:`hsm.keys.replication`); EXTRACTABLE without
WRAP_WITH_TRUSTED breaks policy. Its HSM object names itself, so the HSM alone can say which
keys and versions exist:

- ``CKA_LABEL`` = ``hsm/<key id>/v<version>`` (the key id is a UUID we make);
- ``CKA_ID`` = the 16 UUID bytes followed by the version as uint32 big-endian.

The key check value (KCV) is the module's ``CKA_CHECK_VALUE`` (for AES: the first 3 bytes
of AES-ECB of a zero block), in hex: two HSMs that hold the same key show the same KCV
without revealing it.
"""

from __future__ import annotations

import logging
import re
import uuid
from dataclasses import dataclass
from typing import Any

from pkcs11 import Attribute, KeyType, MechanismFlag, ObjectClass

from hsm.errors import InvalidInput, UnsafeKey

__all__ = [
    "KeyInfo",
    "check_attributes",
    "check_version",
    "create_template",
    "key_id_bytes",
    "label_for",
    "parse_label",
]

log = logging.getLogger(__name__)

LABEL_PREFIX = "hsm/"
_LABEL = re.compile(r"^hsm/([0-9a-f-]{36})/v([1-9][0-9]{0,9})$")
MAX_VERSION = 0xFFFFFFFF  # CKA_ID carries the version as uint32

CAPABILITIES = (
    MechanismFlag.ENCRYPT | MechanismFlag.DECRYPT | MechanismFlag.WRAP | MechanismFlag.UNWRAP
)

POLICY_ATTRIBUTES = (
    Attribute.CLASS,
    Attribute.KEY_TYPE,
    Attribute.VALUE_LEN,
    Attribute.TOKEN,
    Attribute.PRIVATE,
    Attribute.SENSITIVE,
    Attribute.EXTRACTABLE,
    Attribute.SIGN,
    Attribute.VERIFY,
    Attribute.DERIVE,
)

# Read with POLICY_ATTRIBUTES where the module knows it; a module that does not (its
# C_GetAttributeValue says AttributeTypeInvalid) is read as WRAP_WITH_TRUSTED = false.
TRUST_ATTRIBUTE = Attribute.WRAP_WITH_TRUSTED


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


def create_template(key_id: str, version: int, *, replicable: bool = False,
                    ) -> tuple[str, bytes, dict[Attribute, Any]]:
    """``(label, id, template)`` for ``generate_key``: everything explicit, no defaults.

    ``replicable`` adds EXTRACTABLE and WRAP_WITH_TRUSTED (both one-way: the HSM never lets
    such a key out except wrapped under a CKA_TRUSTED key).
    """
    template = {
        Attribute.TOKEN: True,
        Attribute.PRIVATE: True,
        Attribute.SENSITIVE: True,
        Attribute.EXTRACTABLE: bool(replicable),
        Attribute.SIGN: False,
        Attribute.VERIFY: False,
        Attribute.DERIVE: False,
    }
    if replicable:
        template[Attribute.WRAP_WITH_TRUSTED] = True
    cka_id = key_id_bytes(key_id) + version.to_bytes(4, "big")
    return label_for(key_id, version), cka_id, template


def check_attributes(attrs: dict[Any, Any], label: str, *, allow_unsafe: bool) -> None:
    """Refuse a key whose attributes break the master-key policy (unless allowed).

    EXTRACTABLE is accepted only together with WRAP_WITH_TRUSTED (a replicable key); a
    missing WRAP_WITH_TRUSTED reads as false.
    """
    want = {
        Attribute.CLASS: ObjectClass.SECRET_KEY,
        Attribute.KEY_TYPE: KeyType.AES,
        Attribute.VALUE_LEN: 32,
        Attribute.TOKEN: True,
        Attribute.PRIVATE: True,
        Attribute.SENSITIVE: True,
        Attribute.EXTRACTABLE: False,
        Attribute.SIGN: False,
        Attribute.VERIFY: False,
        Attribute.DERIVE: False,
    }
    if attrs.get(Attribute.VALUE_LEN) == 0 and attrs.get(Attribute.KEY_TYPE) == KeyType.AES:
        # SoftHSM 2.6 records no length on keys made by C_UnwrapKey (its issue #628); the
        # import path proves the length itself, so "not reported" is not a violation.
        want.pop(Attribute.VALUE_LEN)
    if attrs.get(TRUST_ATTRIBUTE) is True and attrs.get(Attribute.EXTRACTABLE) is True:
        # Replicable: it can leave the HSM only wrapped under a CKA_TRUSTED key.
        want[Attribute.EXTRACTABLE] = True
    wrong = sorted(a.name for a, v in want.items() if attrs.get(a) != v)
    if Attribute.EXTRACTABLE.name in wrong:
        wrong[wrong.index(Attribute.EXTRACTABLE.name)] = "EXTRACTABLE without WRAP_WITH_TRUSTED"
    if not wrong:
        return
    message = f"master key {label} breaks policy: {', '.join(wrong)}"
    if not allow_unsafe:
        raise UnsafeKey(message + " (open with allow_unsafe_keys=True to use it anyway)")
    log.warning("%s; used anyway because allow_unsafe_keys is set", message)
