"""The edge's typed key objects (hsm.pkcs11.objects) and the security officer's session:
templates written explicitly, attribute reads as typed results, GCM and KCV inside the HSM,
and every python-pkcs11 error through the one translation table."""

from __future__ import annotations

import ctypes
import os
import uuid
from collections.abc import Iterator
from typing import Any

import pkcs11.exceptions as p11e
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pkcs11 import Attribute, ObjectClass
from pkcs11 import KeyType as P11KeyType

import hsm
from hsm.errors import HSMUnavailable, InvalidCiphertext, OperationFailed, Reason
from hsm.pkcs11 import (
    AES_GCM,
    AES_KEY_WRAP,
    Attr,
    Capability,
    KeyClass,
    KeyTemplate,
    KeyType,
    Lease,
    Secret,
    SecretKey,
    SecurityOfficer,
    TokenSelector,
    translated,
)
from hsm.pkcs11.objects import MAPPER, p11_template
from hsm.pkcs11.officer import _pack_bool_template

PLAIN = KeyTemplate(key_type=KeyType.AES, capabilities=Capability.ENCRYPT | Capability.DECRYPT,
                    token=False, private=True, sensitive=False, extractable=True)


def _software_kcv(value: bytes) -> str:
    encryptor = Cipher(algorithms.AES(value), modes.ECB()).encryptor()  # noqa: S305 (KCV)
    return (encryptor.update(bytes(16)) + encryptor.finalize())[:3].hex()


# -- templates ---------------------------------------------------------------------------------


def test_template_writes_every_capability_and_the_core_attributes() -> None:
    """A template becomes python-pkcs11's dict with all seven capabilities (true only for
    those asked), TOKEN/PRIVATE/SENSITIVE/EXTRACTABLE, and nothing left to defaults."""
    attrs = p11_template(KeyTemplate(key_type=KeyType.AES,
                                     capabilities=Capability.WRAP | Capability.UNWRAP,
                                     token=True, private=False, sensitive=True,
                                     extractable=False))
    assert attrs == {
        Attribute.TOKEN: True, Attribute.PRIVATE: False, Attribute.SENSITIVE: True,
        Attribute.EXTRACTABLE: False, Attribute.ENCRYPT: False, Attribute.DECRYPT: False,
        Attribute.WRAP: True, Attribute.UNWRAP: True, Attribute.SIGN: False,
        Attribute.VERIFY: False, Attribute.DERIVE: False,
    }


def test_template_writes_optional_attributes_only_when_set() -> None:
    """Label, id, WRAP_WITH_TRUSTED, TRUSTED and MODIFIABLE appear only when given."""
    attrs = p11_template(KeyTemplate(key_type=KeyType.AES, capabilities=Capability(0),
                                     token=True, private=True, sensitive=True,
                                     extractable=True, label="l", cka_id=b"i",
                                     wrap_with_trusted=True, trusted=False, modifiable=False))
    assert attrs[Attribute.LABEL] == "l"
    assert attrs[Attribute.ID] == b"i"
    assert attrs[Attribute.WRAP_WITH_TRUSTED] is True
    assert attrs[Attribute.TRUSTED] is False
    assert attrs[Attribute.MODIFIABLE] is False
    bare = p11_template(PLAIN)
    assert not {Attribute.LABEL, Attribute.ID, Attribute.WRAP_WITH_TRUSTED, Attribute.TRUSTED,
                Attribute.MODIFIABLE} & bare.keys()


def test_allowed_mechanisms_pack_as_ulongs_and_modifiable_comes_last() -> None:
    """CKA_ALLOWED_MECHANISMS is written as an array of CK_ULONG (python-pkcs11 can't map it)
    and read back as a tuple; MODIFIABLE is the template's last attribute (SoftHSM refuses
    every attribute of an unwrap template after MODIFIABLE=false)."""
    template = KeyTemplate(key_type=KeyType.AES, capabilities=Capability.ENCRYPT, token=True,
                           private=True, sensitive=True, extractable=False,
                           wrap_with_trusted=True, modifiable=False,
                           allowed_mechanisms=(AES_GCM,))
    attrs = p11_template(template)
    assert attrs[Attribute.ALLOWED_MECHANISMS] == (AES_GCM,)
    assert list(attrs)[-1] == Attribute.MODIFIABLE
    packed = MAPPER.pack_attribute(Attribute.ALLOWED_MECHANISMS, (AES_GCM, AES_KEY_WRAP))
    assert len(packed) == 2 * ctypes.sizeof(ctypes.c_ulong)
    assert MAPPER.unpack_attributes(Attribute.ALLOWED_MECHANISMS, packed) == (AES_GCM,
                                                                              AES_KEY_WRAP)
    assert MAPPER.unpack_attributes(Attribute.ALLOWED_MECHANISMS, b"") == ()


def test_a_template_must_be_a_key_template() -> None:
    """Anything but a KeyTemplate (a python-pkcs11 dict, say) is refused."""
    with pytest.raises(hsm.InvalidInput):
        p11_template({Attribute.TOKEN: True})  # type: ignore[arg-type]


def test_the_unwrap_template_packs_as_ck_attributes() -> None:
    """The SO session's CKA_UNWRAP_TEMPLATE is an array of CK_ATTRIBUTE with 1-byte booleans."""
    items = ((Attr.SENSITIVE, True), (Attr.DERIVE, False))
    packed = _pack_bool_template(items)
    width = ctypes.sizeof(ctypes.c_ulong) * 2 + ctypes.sizeof(ctypes.c_void_p)
    assert len(packed) == 2 * width
    first = int.from_bytes(packed[:ctypes.sizeof(ctypes.c_ulong)], "little")
    second = int.from_bytes(packed[width:width + ctypes.sizeof(ctypes.c_ulong)], "little")
    assert (first, second) == (int(Attribute.SENSITIVE), int(Attribute.DERIVE))


# -- translation rows ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raised", "reason"),
    [
        (p11e.AttributeTypeInvalid(), Reason.ATTRIBUTE_TYPE_INVALID),
        (p11e.AttributeSensitive(), Reason.ATTRIBUTE_SENSITIVE),
        (p11e.AttributeValueInvalid(), Reason.ATTRIBUTE_VALUE_INVALID),
        (p11e.TemplateInconsistent(), Reason.TEMPLATE_INCONSISTENT),
        (p11e.TemplateIncomplete(), Reason.TEMPLATE_INCOMPLETE),
        (p11e.UserAlreadyLoggedIn(), Reason.USER_ALREADY_LOGGED_IN),
        (p11e.AnotherUserAlreadyLoggedIn(), Reason.ANOTHER_USER_LOGGED_IN),
        (p11e.UserTooManyTypes(), Reason.USER_TOO_MANY_TYPES),
        (p11e.SessionReadOnlyExists(), Reason.SESSION_READ_ONLY_EXISTS),
        (p11e.PKCS11Error("Initialisation error (already initialized)."),
         Reason.ALREADY_INITIALIZED),
    ],
)
def test_translation_rows_for_attributes_templates_and_logins(
    raised: Exception, reason: Reason,
) -> None:
    """Attribute, template and login refusals each get their own reason (permanent errors)."""
    with pytest.raises(OperationFailed) as info, translated("op"):
        raise raised
    assert info.value.reason is reason
    assert not info.value.transient


# -- attribute reads, on a stand-in object --------------------------------------------------------


class _Object:
    """A stand-in for a python-pkcs11 key object: attributes, refusals, ECB."""

    def __init__(self, values: dict[int, Any], refuse: dict[int, Exception],
                 whole: Exception | None = None) -> None:
        self.session = object()
        self.handle = 7
        self.values = values
        self.refuse = refuse
        self.whole = whole
        self.ecb_calls = 0

    def get_attributes(self, keys: list[int]) -> dict[int, Any]:
        if len(keys) > 1 and self.whole is not None:
            raise self.whole
        for key in keys:
            if key in self.refuse:
                raise self.refuse[key]
        return {key: self.values[key] for key in keys if key in self.values}

    def __getitem__(self, key: int) -> Any:
        return self.get_attributes([key])[key]

    def encrypt(self, data: bytes, mechanism: Any = None) -> bytes:
        self.ecb_calls += 1
        return bytes.fromhex("abcdef") + bytes(13)


def test_read_gives_typed_values() -> None:
    """CLASS and KEY_TYPE come back as the edge's enums (an int for one they don't name)."""
    obj = _Object({int(Attribute.CLASS): ObjectClass.SECRET_KEY,
                   int(Attribute.KEY_TYPE): P11KeyType.DES3,
                   int(Attribute.SENSITIVE): True, int(Attribute.VALUE_LEN): 24}, {})
    attrs = SecretKey(obj).read([Attr.CLASS, Attr.KEY_TYPE, Attr.SENSITIVE, Attr.VALUE_LEN])
    assert attrs == {Attr.CLASS: KeyClass.SECRET_KEY, Attr.KEY_TYPE: int(P11KeyType.DES3),
                     Attr.SENSITIVE: True, Attr.VALUE_LEN: 24}


def test_unknown_or_sensitive_attributes_are_absent_not_errors() -> None:
    """A module that refuses the whole read for one unknown attribute is read one by one; the
    unknown and the sensitive ones are absent from the result."""
    obj = _Object({int(Attribute.TOKEN): True},
                  {int(Attribute.WRAP_WITH_TRUSTED): p11e.AttributeTypeInvalid(),
                   int(Attribute.CHECK_VALUE): p11e.AttributeSensitive()},
                  whole=p11e.AttributeTypeInvalid())
    key = SecretKey(obj)
    assert key.read([Attr.TOKEN, Attr.WRAP_WITH_TRUSTED, Attr.CHECK_VALUE]) == {Attr.TOKEN: True}
    assert key.check_value() is None


def test_other_read_errors_are_raised_translated() -> None:
    """A device error while reading attributes is the package's transient error."""
    obj = _Object({}, {int(Attribute.TOKEN): p11e.DeviceError()})
    with pytest.raises(HSMUnavailable) as info:
        SecretKey(obj).read([Attr.TOKEN])
    assert info.value.reason is Reason.DEVICE_ERROR


def test_kcv_is_the_check_value_or_computed_in_the_hsm() -> None:
    """kcv() is CKA_CHECK_VALUE when the module has one; else AES-ECB of a zero block in the
    HSM, also when the module answers FunctionFailed for it (SoftHSM)."""
    with_value = _Object({int(Attribute.CHECK_VALUE): bytes.fromhex("123456")}, {})
    assert SecretKey(with_value).kcv() == "123456"
    assert with_value.ecb_calls == 0
    for empty in (_Object({int(Attribute.CHECK_VALUE): b""}, {}),
                  _Object({}, {int(Attribute.CHECK_VALUE): p11e.FunctionFailed()})):
        assert SecretKey(empty).kcv() == "abcdef"
        assert empty.ecb_calls == 1


# -- on SoftHSM -----------------------------------------------------------------------------------


@pytest.fixture
def lease(client: hsm.Client) -> Iterator[Lease]:
    """A worker session of the shared harness's pool."""
    with client._keyring.pool.session() as lent:
        yield lent


def test_generated_key_has_exactly_its_template(lease: Lease) -> None:
    """A key generated from a template reads back what the template says, and its KCV."""
    label = f"edge-{uuid.uuid4()}"
    template = KeyTemplate(key_type=KeyType.AES, capabilities=Capability.ENCRYPT, token=False,
                           private=True, sensitive=True, extractable=False, label=label,
                           cka_id=b"edge")
    key = lease.generate_key(template, 32)
    try:
        attrs = key.read([Attr.CLASS, Attr.KEY_TYPE, Attr.VALUE_LEN, Attr.TOKEN, Attr.PRIVATE,
                          Attr.SENSITIVE, Attr.EXTRACTABLE, Attr.ENCRYPT, Attr.DECRYPT,
                          Attr.WRAP, Attr.UNWRAP, Attr.SIGN, Attr.VERIFY, Attr.DERIVE,
                          Attr.LABEL, Attr.ID])
        assert attrs == {
            Attr.CLASS: KeyClass.SECRET_KEY, Attr.KEY_TYPE: KeyType.AES, Attr.VALUE_LEN: 32,
            Attr.TOKEN: False, Attr.PRIVATE: True, Attr.SENSITIVE: True,
            Attr.EXTRACTABLE: False, Attr.ENCRYPT: True, Attr.DECRYPT: False,
            Attr.WRAP: False, Attr.UNWRAP: False, Attr.SIGN: False, Attr.VERIFY: False,
            Attr.DERIVE: False, Attr.LABEL: label, Attr.ID: b"edge",
        }
        assert key.label() == label
        assert [k.label() for k in lease.find_keys(label)] == [label]
        assert len(key.kcv()) == 6
    finally:
        key.destroy()
    assert lease.find_keys(label) == []


def test_gcm_inside_the_hsm_is_aes_gcm(lease: Lease) -> None:
    """encrypt_gcm, encrypt_gcm_random and decrypt_gcm give and take what AES-GCM does; a
    changed AAD is InvalidCiphertext; the KCV matches the material's."""
    value = os.urandom(32)
    key = lease.create_key(PLAIN, value)
    try:
        iv, aad, data = os.urandom(12), b"header", os.urandom(40)
        sealed = key.encrypt_gcm(data, iv, aad, "test")
        assert sealed == AESGCM(value).encrypt(iv, data, aad)
        assert key.decrypt_gcm(sealed, iv, aad, "test") == data
        fresh, sealed = key.encrypt_gcm_random(24, iv, aad, "test")
        assert len(fresh) == 24
        assert AESGCM(value).decrypt(iv, sealed, aad) == fresh
        with pytest.raises(InvalidCiphertext):
            key.decrypt_gcm(sealed, iv, b"other", "test")
        assert key.kcv() == _software_kcv(value)
        assert "handle" in repr(key)
        assert value.hex() not in repr(key)
    finally:
        key.destroy()


def test_wrap_and_unwrap_between_key_objects(lease: Lease) -> None:
    """A key wrapped under another (RFC 3394) unwraps into a key with the unwrap template's
    attributes and the same KCV; a blob under another key is InvalidCiphertext."""
    kek = lease.create_key(KeyTemplate(key_type=KeyType.AES,
                                       capabilities=Capability.WRAP | Capability.UNWRAP,
                                       token=False, private=True, sensitive=True,
                                       extractable=False), os.urandom(32))
    other = lease.create_key(KeyTemplate(key_type=KeyType.AES, capabilities=Capability.UNWRAP,
                                         token=False, private=True, sensitive=True,
                                         extractable=False), os.urandom(32))
    value = os.urandom(32)
    target = lease.create_key(PLAIN, value)
    made = [kek, other, target]
    try:
        blob = kek.wrap(target, AES_KEY_WRAP)
        assert len(blob) == 40
        locked = KeyTemplate(key_type=KeyType.AES, capabilities=Capability.ENCRYPT,
                             token=False, private=True, sensitive=True, extractable=False)
        copy = kek.unwrap(blob, AES_KEY_WRAP, locked)
        made.append(copy)
        assert copy.read([Attr.SENSITIVE, Attr.EXTRACTABLE, Attr.DECRYPT]) == {
            Attr.SENSITIVE: True, Attr.EXTRACTABLE: False, Attr.DECRYPT: False}
        assert copy.kcv() == _software_kcv(value)
        with pytest.raises(InvalidCiphertext):
            other.unwrap(blob, AES_KEY_WRAP, locked)
    finally:
        for key in reversed(made):
            key.destroy()


def test_lease_random_bytes(lease: Lease) -> None:
    """Lease.random gives the asked number of bytes from the token's RNG."""
    assert len(lease.random(17)) == 17
    assert lease.random(32) != lease.random(32)


def test_officer_shows_no_pin_and_refuses_calls_before_login() -> None:
    """The SO session's repr names the token, never the PIN; calls before open() are refused."""
    module: Any = object()
    officer = SecurityOfficer(module, TokenSelector(label="t"), Secret("so-pin-1234"),
                              name="member-a")
    assert "so-pin-1234" not in repr(officer)
    assert "member-a" in repr(officer)
    with pytest.raises(OperationFailed) as info:
        officer.random(4)
    assert info.value.reason is Reason.NOT_OPEN

