"""Master keys: created non-extractable, checked on load, named on the HSM itself."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import pkcs11.exceptions as p11e
import pytest
from pkcs11 import Attribute, ObjectClass

import hsm
from hsm.errors import Reason
from hsm.keys import KeyInfo, Keyring
from hsm.keys.master import label_for
from hsm.pkcs11 import Attr, Capability, KeyTemplate, KeyType, SecretKey
from hsm.testing import Harness


def _key(client: hsm.Client, key: KeyInfo) -> SecretKey:
    """The key object behind a master key, found through the client's own keyring."""
    keyring = client._keyring
    with keyring.pool.session() as lease:
        return keyring._keys.find(lease, uuid.UUID(key.key_id).bytes, key.version)


def _raw_object(client: hsm.Client, key: KeyInfo) -> Any:
    """The python-pkcs11 object behind a master key, to poke the HSM directly (test-only)."""
    with client._keyring.pool.session() as lease:
        found = list(lease.session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY,
                                                Attribute.LABEL: label_for(key.key_id,
                                                                           key.version)}))
    assert len(found) == 1
    return found[0]


def test_master_key_attributes(client: hsm.Client, master_key: KeyInfo) -> None:
    """A new master key is AES-256, a private token object, sensitive, never extractable,
    and can only encrypt, decrypt, wrap and unwrap."""
    attrs = _key(client, master_key).read([
        Attr.KEY_TYPE, Attr.VALUE_LEN, Attr.TOKEN, Attr.PRIVATE, Attr.SENSITIVE,
        Attr.EXTRACTABLE, Attr.NEVER_EXTRACTABLE, Attr.ALWAYS_SENSITIVE, Attr.ENCRYPT,
        Attr.DECRYPT, Attr.WRAP, Attr.UNWRAP, Attr.SIGN, Attr.VERIFY, Attr.DERIVE,
        Attr.LABEL, Attr.ID,
    ])
    assert attrs[Attr.KEY_TYPE] is KeyType.AES
    assert attrs[Attr.VALUE_LEN] == 32
    assert attrs[Attr.TOKEN] is True
    assert attrs[Attr.PRIVATE] is True
    assert attrs[Attr.SENSITIVE] is True
    assert attrs[Attr.ALWAYS_SENSITIVE] is True
    assert attrs[Attr.EXTRACTABLE] is False
    assert attrs[Attr.NEVER_EXTRACTABLE] is True
    assert all(attrs[a] is True for a in (Attr.ENCRYPT, Attr.DECRYPT, Attr.WRAP, Attr.UNWRAP))
    assert all(attrs[a] is False for a in (Attr.SIGN, Attr.VERIFY, Attr.DERIVE))
    assert attrs[Attr.LABEL] == label_for(master_key.key_id, 1)
    assert attrs[Attr.ID] == uuid.UUID(master_key.key_id).bytes + (1).to_bytes(4, "big")
    with pytest.raises((p11e.AttributeSensitive, p11e.FunctionFailed)):
        _raw_object(client, master_key)[Attribute.VALUE]


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


def _plant_key(client: hsm.Client, *, extractable: bool, sensitive: bool,
               derive: bool = False) -> str:
    """Put an AES key under an hsm label, made with a chosen (unsafe) template."""
    key_id = str(uuid.uuid4())
    capabilities = Capability.ENCRYPT | Capability.DECRYPT
    template = KeyTemplate(
        key_type=KeyType.AES,
        capabilities=capabilities | Capability.DERIVE if derive else capabilities,
        token=True, private=True, sensitive=sensitive, extractable=extractable,
        label=label_for(key_id, 1), cka_id=uuid.UUID(key_id).bytes + (1).to_bytes(4, "big"),
    )
    with client._keyring.pool.session() as lease:
        lease.generate_key(template, 32)
    return key_id


@pytest.mark.parametrize(
    "template",
    [
        {"extractable": True, "sensitive": True},
        {"extractable": False, "sensitive": False},
        {"extractable": False, "sensitive": True, "derive": True},
    ],
)
def test_unsafe_keys_are_refused(client: hsm.Client, template: dict[str, bool]) -> None:
    """A key under our label whose attributes break policy is refused by name."""
    key_id = _plant_key(client, **template)
    with pytest.raises(hsm.UnsafeKey) as info:
        client.wrap(key_id, bytes(32))
    assert key_id in str(info.value)


def test_unsafe_keys_are_usable_when_explicitly_allowed(
    shared_harness: Harness, client: hsm.Client, caplog: pytest.LogCaptureFixture
) -> None:
    """allow_unsafe_keys=True uses such a key, with a warning in the log."""
    key_id = _plant_key(client, extractable=True, sensitive=True)
    with hsm.open(shared_harness.config_path, allow_unsafe_keys=True) as lenient:
        caplog.set_level(logging.WARNING)
        blob = lenient.wrap(key_id, bytes(32))
        assert lenient.unwrap(blob) == bytes(32)
    assert any("breaks policy" in r.getMessage() for r in caplog.records)


def test_describe_names_the_token_module_mechanisms_and_keys(
    client: hsm.Client, master_key: KeyInfo,
) -> None:
    """Keyring.describe gives what ``hsm status`` shows: token label and serial, OS locking,
    the probed mechanisms and how many master key versions the token holds."""
    ring = client._keyring
    out = ring.describe()
    assert set(out) == {"token_label", "token_serial", "os_locking", "mechanisms", "keys"}
    assert out["token_label"] == ring.pool.token_label != ""
    assert out["token_serial"] == ring.pool.token_serial != ""
    assert out["os_locking"] is ring.pool.module.os_locking is True
    assert out["mechanisms"] == ring.mechanisms.as_dict()
    assert out["mechanisms"]["gcm_iv"] == "caller"
    assert out["keys"] == len(client.list_keys()) >= 1


def test_describe_of_a_keyring_not_opened_raises(client: hsm.Client) -> None:
    """describe() lets errors propagate: a keyring whose mechanisms were never probed says
    it is not open."""
    with pytest.raises(hsm.OperationFailed) as info:
        Keyring(client._keyring.pool).describe()
    assert info.value.reason is Reason.NOT_OPEN


def test_allow_unsafe_keys_is_read_at_each_use(client: hsm.Client) -> None:
    """Keyring.allow_unsafe_keys stays a plain attribute: set on an open keyring, the next
    use of an unsafe key goes through with a warning instead of UnsafeKey."""
    key_id = _plant_key(client, extractable=False, sensitive=False)
    ring = Keyring(client._keyring.pool).open()
    assert ring.allow_unsafe_keys is False
    with pytest.raises(hsm.UnsafeKey):
        ring.wrap(key_id, bytes(32))
    ring.allow_unsafe_keys = True
    assert ring.unwrap(ring.wrap(key_id, bytes(32))) == bytes(32)
