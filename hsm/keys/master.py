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
without revealing it (:meth:`hsm.pkcs11.SecretKey.kcv` reads or computes it).

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

from hsm.errors import InvalidInput, UnsafeKey
from hsm.pkcs11 import Attr, AttrValue, Capability, KeyClass, KeyTemplate, KeyType, SecretKey

__all__ = [
    "CAPABILITIES",
    "POLICY_ATTRIBUTES",
    "TRUST_ATTRIBUTE",
    "KeyInfo",
    "check_attributes",
    "check_key",
    "check_version",
    "create_template",
    "key_id_bytes",
    "label_for",
    "parse_label",
    "policy_attributes",
]

log = logging.getLogger(__name__)

LABEL_PREFIX = "hsm/"
_LABEL = re.compile(r"^hsm/([0-9a-f-]{36})/v([1-9][0-9]{0,9})$")
MAX_VERSION = 0xFFFFFFFF  # CKA_ID carries the version as uint32
KEY_BYTES = 32  # AES-256

CAPABILITIES = Capability.ENCRYPT | Capability.DECRYPT | Capability.WRAP | Capability.UNWRAP

POLICY_ATTRIBUTES = (
    Attr.CLASS,
    Attr.KEY_TYPE,
    Attr.VALUE_LEN,
    Attr.TOKEN,
    Attr.PRIVATE,
    Attr.SENSITIVE,
    Attr.EXTRACTABLE,
    Attr.SIGN,
    Attr.VERIFY,
    Attr.DERIVE,
)

# Read with POLICY_ATTRIBUTES; a module that does not know it reports none, read as false.
TRUST_ATTRIBUTE = Attr.WRAP_WITH_TRUSTED
_POLICY_READ = (*POLICY_ATTRIBUTES, TRUST_ATTRIBUTE)


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


def create_template(key_id: str, version: int, *, replicable: bool = False) -> KeyTemplate:
    """The template of master key ``key_id`` version ``version``: label and id as above,
    everything explicit, no defaults (:data:`CAPABILITIES` and nothing else).

    ``replicable`` adds EXTRACTABLE and WRAP_WITH_TRUSTED (both one-way: the HSM never lets
    such a key out except wrapped under a CKA_TRUSTED key).
    """
    return KeyTemplate(
        key_type=KeyType.AES, capabilities=CAPABILITIES, token=True, private=True,
        sensitive=True, extractable=bool(replicable), label=label_for(key_id, version),
        cka_id=key_id_bytes(key_id) + version.to_bytes(4, "big"),
        wrap_with_trusted=True if replicable else None,
    )


def policy_attributes(key: SecretKey) -> dict[Attr, AttrValue]:
    """The policy attributes of ``key`` and WRAP_WITH_TRUSTED (false where the module doesn't
    know it); {} if the module reports none of them."""
    attrs = key.read(_POLICY_READ)
    if attrs:
        attrs.setdefault(TRUST_ATTRIBUTE, False)
    return attrs


def check_key(key: SecretKey, label: str, *, allow_unsafe: bool) -> None:
    """Read ``key``'s policy attributes and :func:`check_attributes` them; a key whose
    attributes can't be read at all is :class:`UnsafeKey`."""
    attrs = policy_attributes(key)
    if not attrs:
        raise UnsafeKey(f"attributes of master key {label} can't be read")
    check_attributes(attrs, label, allow_unsafe=allow_unsafe)


def check_attributes(attrs: Mapping[Attr, AttrValue], label: str, *,
                     allow_unsafe: bool) -> None:
    """Refuse a key whose attributes break the master-key policy (unless allowed).

    EXTRACTABLE is accepted only together with WRAP_WITH_TRUSTED (a replicable key); a
    missing WRAP_WITH_TRUSTED reads as false.
    """
    want: dict[Attr, AttrValue] = {
        Attr.CLASS: KeyClass.SECRET_KEY,
        Attr.KEY_TYPE: KeyType.AES,
        Attr.VALUE_LEN: KEY_BYTES,
        Attr.TOKEN: True,
        Attr.PRIVATE: True,
        Attr.SENSITIVE: True,
        Attr.EXTRACTABLE: False,
        Attr.SIGN: False,
        Attr.VERIFY: False,
        Attr.DERIVE: False,
    }
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
    if not wrong:
        return
    message = f"master key {label} breaks policy: {', '.join(wrong)}"
    if not allow_unsafe:
        raise UnsafeKey(message + " (open with allow_unsafe_keys=True to use it anyway)")
    log.warning("%s; used anyway because allow_unsafe_keys is set", message)
