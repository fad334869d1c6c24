"""Master keys: created non-extractable, checked on load, named on the HSM itself."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import pkcs11.exceptions as p11e
import pytest
from pkcs11 import Attribute, GCMParams, Mechanism, ObjectClass

import hsm
from hsm.errors import Reason
from hsm.keys import KeyInfo, Keyring
from hsm.keys.master import label_for
from hsm.pkcs11 import AES_GCM, Attr, Capability, KeyTemplate, KeyType, SecretKey
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
    not modifiable, allowed AES-GCM alone, and can only encrypt and decrypt."""
    attrs = _key(client, master_key).read([
        Attr.KEY_TYPE, Attr.VALUE_LEN, Attr.TOKEN, Attr.PRIVATE, Attr.SENSITIVE,
        Attr.EXTRACTABLE, Attr.NEVER_EXTRACTABLE, Attr.ALWAYS_SENSITIVE, Attr.ENCRYPT,
        Attr.DECRYPT, Attr.WRAP, Attr.UNWRAP, Attr.SIGN, Attr.VERIFY, Attr.DERIVE,
        Attr.LABEL, Attr.ID, Attr.MODIFIABLE, Attr.ALLOWED_MECHANISMS,
    ])
    assert attrs[Attr.KEY_TYPE] is KeyType.AES
    assert attrs[Attr.VALUE_LEN] == 32
    assert attrs[Attr.TOKEN] is True
    assert attrs[Attr.PRIVATE] is True
    assert attrs[Attr.SENSITIVE] is True
    assert attrs[Attr.ALWAYS_SENSITIVE] is True
    assert attrs[Attr.EXTRACTABLE] is False
    assert attrs[Attr.NEVER_EXTRACTABLE] is True
    assert all(attrs[a] is True for a in (Attr.ENCRYPT, Attr.DECRYPT))
    assert all(attrs[a] is False for a in (Attr.WRAP, Attr.UNWRAP, Attr.SIGN, Attr.VERIFY,
                                           Attr.DERIVE, Attr.MODIFIABLE))
    assert attrs[Attr.ALLOWED_MECHANISMS] == (AES_GCM,)
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


# -- rights: only what master keys use ------------------------------------------------------


def test_a_user_pin_holder_cannot_use_a_master_key_with_aes_ecb(
    client: hsm.Client, master_key: KeyInfo,
) -> None:
    """Whoever holds the user PIN can't run AES-ECB (or any mechanism but AES-GCM) with a
    master key: the HSM refuses it."""
    with pytest.raises(p11e.MechanismInvalid):
        _raw_object(client, master_key).encrypt(bytes(16), mechanism=Mechanism.AES_ECB)


def test_a_user_pin_holder_cannot_add_rights_to_a_master_key(
    client: hsm.Client, master_key: KeyInfo,
) -> None:
    """A master key is not modifiable: setting CKA_DERIVE (to derive a readable key) or
    CKA_WRAP on it is refused, and the key still says false."""
    raw = _raw_object(client, master_key)
    for attribute in (Attribute.DERIVE, Attribute.WRAP):
        with pytest.raises(p11e.PKCS11Error):
            raw[attribute] = True
    attrs = _key(client, master_key).read([Attr.DERIVE, Attr.WRAP, Attr.MODIFIABLE])
    assert attrs == {Attr.DERIVE: False, Attr.WRAP: False, Attr.MODIFIABLE: False}


def test_the_kcv_is_computed_with_aes_gcm_in_the_hsm(
    client: hsm.Client, master_key: KeyInfo,
) -> None:
    """The KCV is the first 3 bytes of AES-GCM of a zero block under a zero IV, computed in
    the HSM (the only mechanism the key allows), not the key's CKA_CHECK_VALUE."""
    raw = _raw_object(client, master_key)
    sealed = raw.encrypt(bytes(16), mechanism=Mechanism.AES_GCM,
                         mechanism_param=GCMParams(bytes(12), b"", 128))
    assert master_key.kcv == bytes(sealed[:3]).hex()
    assert _key(client, master_key).kcv_gcm() == master_key.kcv


def _plant_old_key(client: hsm.Client) -> str:
    """A key as hsm made master keys before: WRAP and UNWRAP, modifiable, no allowed
    mechanisms (otherwise the master-key template)."""
    key_id = str(uuid.uuid4())
    template = KeyTemplate(
        key_type=KeyType.AES,
        capabilities=Capability.ENCRYPT | Capability.DECRYPT | Capability.WRAP
        | Capability.UNWRAP,
        token=True, private=True, sensitive=True, extractable=False,
        label=label_for(key_id, 1), cka_id=uuid.UUID(key_id).bytes + (1).to_bytes(4, "big"),
    )
    with client._keyring.pool.session() as lease:
        lease.generate_key(template, 32)
    return key_id


def test_keys_made_with_the_older_template_are_refused_saying_how_to_go_on(
    shared_harness: Harness, client: hsm.Client,
) -> None:
    """A master key with WRAP/UNWRAP, MODIFIABLE and no allowed mechanisms (what older
    versions made) is refused naming what is wrong and what to do; allow_unsafe_keys uses it."""
    key_id = _plant_old_key(client)
    with pytest.raises(hsm.UnsafeKey) as info:
        client.wrap(key_id, bytes(32))
    message = str(info.value)
    assert key_id in message
    for word in ("MODIFIABLE", "UNWRAP", "WRAP", "no ALLOWED_MECHANISMS",
                 "allow_unsafe_keys=True", "rotate"):
        assert word in message
    with hsm.open(shared_harness.config_path, allow_unsafe_keys=True) as lenient:
        assert lenient.unwrap(lenient.wrap(key_id, bytes(32))) == bytes(32)


def test_weak_keys_lists_what_is_wrong_and_never_refuses(client: hsm.Client,
                                                        master_key: KeyInfo) -> None:
    """Keyring.weak_keys lists every master key version weaker than the template with what is
    wrong with it, raises no UnsafeKey for them, and leaves compliant keys out."""
    old = _plant_old_key(client)
    unsafe = _plant_key(client, extractable=True, sensitive=True)
    weak = {info.key_id: (info, problems) for info, problems in client._keyring.weak_keys()}
    assert master_key.key_id not in weak
    info, problems = weak[old]
    assert problems == ["MODIFIABLE", "UNWRAP", "WRAP", "no ALLOWED_MECHANISMS"]
    assert info.version == 1
    assert len(info.kcv) == 6
    assert weak[unsafe][1] == ["EXTRACTABLE without WRAP_WITH_TRUSTED", "MODIFIABLE",
                               "no ALLOWED_MECHANISMS"]
    assert all(problems for _, problems in weak.values())
