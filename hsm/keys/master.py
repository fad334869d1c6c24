"""Master keys on one token: the template, naming, attribute policy and key check value.

A master key is AES-256, a token object, PRIVATE, SENSITIVE, not EXTRACTABLE, able to
ENCRYPT/DECRYPT/WRAP/UNWRAP and nothing else. Its HSM object names itself, so the HSM
alone can say which keys and versions exist:

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
    "create_template",
    "key_id_bytes",
    "label_for",
    "parse_label",
]

log = logging.getLogger(__name__)

LABEL_PREFIX = "hsm/"
_LABEL = re.compile(r"^hsm/([0-9a-f-]{36})/v([1-9][0-9]{0,9})$")

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


def label_for(key_id: str, version: int) -> str:
    return f"{LABEL_PREFIX}{key_id}/v{version}"


def parse_label(label: str) -> tuple[str, int] | None:
    match = _LABEL.match(label or "")
    if match is None:
        return None
    return match.group(1), int(match.group(2))


def create_template(key_id: str, version: int) -> tuple[str, bytes, dict[Attribute, Any]]:
    """``(label, id, template)`` for ``generate_key``: everything explicit, no defaults."""
    template = {
        Attribute.TOKEN: True,
        Attribute.PRIVATE: True,
        Attribute.SENSITIVE: True,
        Attribute.EXTRACTABLE: False,
        Attribute.SIGN: False,
        Attribute.VERIFY: False,
        Attribute.DERIVE: False,
    }
    cka_id = key_id_bytes(key_id) + version.to_bytes(4, "big")
    return label_for(key_id, version), cka_id, template


def check_attributes(attrs: dict[Any, Any], label: str, *, allow_unsafe: bool) -> None:
    """Refuse a key whose attributes break the master-key policy (unless allowed)."""
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
    wrong = sorted(a.name for a, v in want.items() if attrs.get(a) != v)
    if not wrong:
        return
    message = f"master key {label} breaks policy: {', '.join(wrong)}"
    if not allow_unsafe:
        raise UnsafeKey(message + " (open with allow_unsafe_keys=True to use it anyway)")
    log.warning("%s; used anyway because allow_unsafe_keys is set", message)
