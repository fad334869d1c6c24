"""Master keys: created non-extractable, checked on load, named on the HSM itself."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import pkcs11.exceptions as p11e
import pytest
from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag

import hsm
from hsm.keys import KeyInfo
from hsm.keys.master import label_for
from hsm.testing import Harness


def _raw_object(client: hsm.Client, key: KeyInfo) -> Any:
    """The HSM object behind a key, found through the client's own pool (test-only)."""
    keyring = client._keyring
    with keyring.pool.session() as lease:
        return keyring._key(lease, uuid.UUID(key.key_id).bytes, key.version)


def test_master_key_attributes(client: hsm.Client, master_key: KeyInfo) -> None:
    """A new master key is AES-256, a private token object, sensitive, never extractable,
    and can only encrypt, decrypt, wrap and unwrap."""
    obj = _raw_object(client, master_key)
    attrs = obj.get_attributes([
        Attribute.KEY_TYPE, Attribute.VALUE_LEN, Attribute.TOKEN, Attribute.PRIVATE,
        Attribute.SENSITIVE, Attribute.EXTRACTABLE, Attribute.NEVER_EXTRACTABLE,
        Attribute.ALWAYS_SENSITIVE, Attribute.ENCRYPT, Attribute.DECRYPT, Attribute.WRAP,
        Attribute.UNWRAP, Attribute.SIGN, Attribute.VERIFY, Attribute.DERIVE, Attribute.LABEL,
        Attribute.ID,
    ])
    assert attrs[Attribute.KEY_TYPE] == KeyType.AES
    assert attrs[Attribute.VALUE_LEN] == 32
    assert attrs[Attribute.TOKEN]
    assert attrs[Attribute.PRIVATE]
    assert attrs[Attribute.SENSITIVE]
    assert attrs[Attribute.ALWAYS_SENSITIVE]
    assert not attrs[Attribute.EXTRACTABLE]
    assert attrs[Attribute.NEVER_EXTRACTABLE]
    assert all(attrs[a] for a in (Attribute.ENCRYPT, Attribute.DECRYPT, Attribute.WRAP,
                                  Attribute.UNWRAP))
    assert not any(attrs[a] for a in (Attribute.SIGN, Attribute.VERIFY, Attribute.DERIVE))
    assert attrs[Attribute.LABEL] == label_for(master_key.key_id, 1)
    assert attrs[Attribute.ID] == uuid.UUID(master_key.key_id).bytes + (1).to_bytes(4, "big")
    with pytest.raises((p11e.AttributeSensitive, p11e.FunctionFailed)):
        obj[Attribute.VALUE]


def test_key_ids_are_uuids_and_kcv_is_stable(client: hsm.Client, master_key: KeyInfo) -> None:
    """Key ids are UUIDs made by us; the KCV is 3 bytes of hex and reads the same again."""
    assert str(uuid.UUID(master_key.key_id)) == master_key.key_id
    assert len(master_key.kcv) == 6
    int(master_key.kcv, 16)
    assert client.key_info(master_key.key_id).kcv == master_key.kcv


def test_list_keys_reads_the_hsm(shared_harness: Harness, master_key: KeyInfo) -> None:
    """A second client, with nothing but the token, lists the same keys and versions."""
    with hsm.open(shared_harness.config_path) as other:
        listed = other.list_keys()
    assert master_key in listed
    assert all(k.version >= 1 for k in listed)


def _plant_key(client: hsm.Client, template: dict[Any, Any]) -> str:
    """Put an AES key under an hsm label, made with a chosen (unsafe) template."""
    key_id = str(uuid.uuid4())
    attrs = {Attribute.TOKEN: True, Attribute.PRIVATE: True, **template}
    with client._keyring.pool.session() as lease:
        lease.session.generate_key(
            KeyType.AES, 256, label=label_for(key_id, 1),
            id=uuid.UUID(key_id).bytes + (1).to_bytes(4, "big"), store=True,
            mechanism=Mechanism.AES_KEY_GEN,
            capabilities=MechanismFlag.ENCRYPT | MechanismFlag.DECRYPT,
            template=attrs,
        )
    return key_id


@pytest.mark.parametrize(
    "template",
    [
        {Attribute.EXTRACTABLE: True, Attribute.SENSITIVE: True},
        {Attribute.EXTRACTABLE: False, Attribute.SENSITIVE: False},
        {Attribute.EXTRACTABLE: False, Attribute.SENSITIVE: True, Attribute.DERIVE: True},
    ],
)
def test_unsafe_keys_are_refused(client: hsm.Client, template: dict[Any, Any]) -> None:
    """A key under our label whose attributes break policy is refused by name."""
    key_id = _plant_key(client, template)
    with pytest.raises(hsm.UnsafeKey) as info:
        client.wrap(key_id, bytes(32))
    assert key_id in str(info.value)


def test_unsafe_keys_are_usable_when_explicitly_allowed(
    shared_harness: Harness, client: hsm.Client, caplog: pytest.LogCaptureFixture
) -> None:
    """allow_unsafe_keys=True uses such a key, with a warning in the log."""
    key_id = _plant_key(client, {Attribute.EXTRACTABLE: True, Attribute.SENSITIVE: True})
    with hsm.open(shared_harness.config_path, allow_unsafe_keys=True) as lenient:
        caplog.set_level(logging.WARNING)
        blob = lenient.wrap(key_id, bytes(32))
        assert lenient.unwrap(blob) == bytes(32)
    assert any("breaks policy" in r.getMessage() for r in caplog.records)
