"""Replicable master keys leaving one HSM and entering another, under the trusted key.

The cluster layer's per-HSM replication primitives, behind :meth:`Keyring.export_key
<hsm.keys.keyring.Keyring.export_key>` and :meth:`Keyring.import_key
<hsm.keys.keyring.Keyring.import_key>`: a replicable master key (EXTRACTABLE and
WRAP_WITH_TRUSTED, :mod:`hsm.keys.master`) is wrapped with AES key wrap (RFC 3394) under the
cluster wrapping key (:mod:`hsm.keys.replication`) and unwrapped on another member under the
same label. The key material never leaves the HSMs in plaintext.
"""

from __future__ import annotations

import logging
import uuid

from hsm.errors import InvalidCiphertext, InvalidInput, OperationFailed, Reason
from hsm.keys.catalog import MasterKeys, canonical, destroy_quietly
from hsm.keys.keywrap import WrapMechanism, pkcs11_mechanism
from hsm.keys.master import (
    KEY_BYTES,
    TRUST_ATTRIBUTE,
    KeyInfo,
    check_key,
    check_version,
    create_template,
    key_id_bytes,
    master_kcv,
    policy_attributes,
)
from hsm.keys.replication import find_wrapping_key, no_wrapping_key
from hsm.pkcs11 import Attr, Mechanisms

__all__ = ["EXPORT_LEN", "export_key", "import_key"]

log = logging.getLogger(__name__)

EXPORT_LEN = 40  # an AES-256 key under AES key wrap (RFC 3394): 32 + 8 bytes


def export_key(keys: MasterKeys, mechanisms: Mechanisms, key_id: str, version: int, *,
               wrapping_key_label: str) -> bytes:
    """Master key ``key_id`` version ``version`` wrapped under the trusted wrapping key
    labelled ``wrapping_key_label``: see :meth:`Keyring.export_key
    <hsm.keys.keyring.Keyring.export_key>`."""
    kid = key_id_bytes(key_id)
    version = check_version(version)
    pool = keys.pool
    with pool.session() as lease:
        key = keys.find(lease, kid, version)
        attrs = policy_attributes(key)
        if not (attrs.get(Attr.EXTRACTABLE) is True and attrs.get(TRUST_ATTRIBUTE) is True):
            raise OperationFailed(
                f"master key {uuid.UUID(bytes=kid)} version {version} is not replicable "
                "(it was created non-extractable): it can never leave the HSM, not even "
                "wrapped", reason=Reason.NOT_REPLICABLE,
            )
        wrapper = find_wrapping_key(lease, wrapping_key_label)
        if wrapper is None:
            pool.check_token(lease)
            raise no_wrapping_key(wrapping_key_label, pool.selector)
        blob = wrapper.wrap(key, pkcs11_mechanism(WrapMechanism.KW, mechanisms,
                                                  length=KEY_BYTES))
    log.info("exported master key %s version %d under %r", uuid.UUID(bytes=kid), version,
             wrapping_key_label)
    return blob


def import_key(keys: MasterKeys, mechanisms: Mechanisms, key_id: str, version: int,
               wrapped: bytes, *, wrapping_key_label: str,
               expected_kcv: str | None = None) -> KeyInfo:
    """Unwrap a blob from :func:`export_key` into this token as master key ``key_id``
    version ``version``: see :meth:`Keyring.import_key
    <hsm.keys.keyring.Keyring.import_key>`."""
    key_id = canonical(key_id)
    kid = key_id_bytes(key_id)
    version = check_version(version)
    if not isinstance(wrapped, bytes | bytearray | memoryview):
        raise InvalidInput(f"wrapped key must be bytes, not {type(wrapped).__name__}")
    data = bytes(wrapped)
    if len(data) != EXPORT_LEN:
        raise InvalidCiphertext("ciphertext does not verify", reason=Reason.WRAPPED_KEY_LENGTH)
    want = expected_kcv.lower() if expected_kcv is not None else None
    mechanism = pkcs11_mechanism(WrapMechanism.KW, mechanisms, length=KEY_BYTES)
    # The copy gets exactly the rights the original was made with (not MODIFIABLE, AES-GCM
    # only where the module enforces it): the importer chooses them, not the blob.
    template = create_template(key_id, version, replicable=True, allowed=keys.allowed)
    pool = keys.pool
    with pool.session() as lease:
        if keys.holds(lease, template.label):
            info = KeyInfo(key_id, version, master_kcv(keys.find(lease, kid, version)))
            if want is not None and info.kcv != want:
                raise OperationFailed(
                    f"token {pool.selector} already holds master key {key_id} version "
                    f"{version} with kcv {info.kcv}, not {want}; it is left as it is",
                    reason=Reason.KCV_MISMATCH,
                )
            return info
        wrapper = find_wrapping_key(lease, wrapping_key_label)
        if wrapper is None:
            pool.check_token(lease)
            raise no_wrapping_key(wrapping_key_label, pool.selector)
        key = wrapper.unwrap(data, mechanism, template, operation="import key")
        try:
            # A 40-byte RFC 3394 blob holds exactly 32 bytes: the length is proven even
            # where the module records none (SoftHSM: VALUE_LEN 0, empty CHECK_VALUE).
            check_key(key, template.label, allow_unsafe=False, allowed=keys.allowed)
            kcv = master_kcv(key)
            if want is not None and kcv != want:
                raise InvalidCiphertext("ciphertext does not verify",
                                        reason=Reason.KCV_MISMATCH)
        except BaseException:
            destroy_quietly(key, template.label)
            raise
    keys.note_version(key_id, version, fresh=False)
    log.info("imported master key %s version %d (kcv %s) under %r", key_id, version, kcv,
             wrapping_key_label)
    return KeyInfo(key_id, version, kcv)
