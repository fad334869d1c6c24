"""Key-object wrap/unwrap (hsm.keys.keywrap) against NIST SP 800-38F KW/KWP vectors and SoftHSM.

The vectors come from the ``cryptography-vectors`` package (CAVS 17.4 ``KW_AE``/``KW_AD``/
``KWP_AE``/``KWP_AD`` with AES-256). Each vector's wrapping key K is imported into SoftHSM as
a session object; the plaintext key P is wrapped inside the HSM (encrypt direction) or C is
unwrapped inside the HSM into an extractable test key whose value is compared with P
(decrypt direction).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import cryptography_vectors
import pytest
from cryptography.hazmat.primitives import keywrap
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pkcs11 import Attribute, Mechanism
from pkcs11.exceptions import AttributeSensitive, MechanismInvalid

from hsm.errors import (
    InvalidCiphertext,
    InvalidInput,
    KeyNotFound,
    MechanismUnsupported,
    OperationFailed,
    Reason,
)
from hsm.keys import Keyring
from hsm.keys.keywrap import (
    WrapMechanism,
    import_wrapped_key,
    pkcs11_mechanism,
    unwrap_key_object,
    wrap_key_object,
)
from hsm.keys.master import label_for
from hsm.pkcs11 import (
    Attr,
    Capability,
    KeyTemplate,
    KeyType,
    Lease,
    Mechanisms,
    Module,
    PinSource,
    SecretKey,
    SessionPool,
    TokenSelector,
)
from hsm.testing import Harness, harness_down, harness_up

KW = WrapMechanism.KW
KWP = WrapMechanism.KWP
NO_CAPABILITIES = Capability(0)
SAMPLE_PER_LENGTH = 20  # the first vectors of every plaintext length of every file

# -- NIST vectors ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Vector:
    """One CAVS case: wrapping key, plaintext key (None for a FAIL case), wrapped key."""

    name: str
    bits: int
    k: bytes
    p: bytes | None
    c: bytes


def _parse(filename: str) -> list[Vector]:
    path = f"keywrap/kwtestvectors/{filename}"
    with cryptography_vectors.open_vector_file(path, "r") as handle:
        lines = handle.read().splitlines()
    vectors: list[Vector] = []
    bits = 0
    case: dict[str, str] = {}

    def flush() -> None:
        if case:
            vectors.append(Vector(
                name=f"{filename}[{bits}]#{case['COUNT']}", bits=bits,
                k=bytes.fromhex(case["K"]), c=bytes.fromhex(case["C"]),
                p=None if "FAIL" in case else bytes.fromhex(case["P"]),
            ))
            case.clear()

    for raw in lines:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[PLAINTEXT LENGTH"):
            flush()
            bits = int(line.strip("[]").split("=")[1])
        elif line == "FAIL":
            case["FAIL"] = ""
        else:
            field, _, value = line.partition("=")
            if field.strip() == "COUNT":
                flush()
            case[field.strip()] = value.strip()
    flush()
    return vectors


VECTOR_FILES = ("KW_AE_256.txt", "KW_AD_256.txt", "KWP_AE_256.txt", "KWP_AD_256.txt")
VECTORS = {name: _parse(name) for name in VECTOR_FILES}
LENGTHS = [(name, bits) for name in VECTOR_FILES
           for bits in sorted({v.bits for v in VECTORS[name]})]


def _cases(direction: str) -> list[Any]:
    return [pytest.param(name, bits, id=f"{name.removesuffix('.txt')}-{bits}")
            for name, bits in LENGTHS if direction in name]

def _sample(name: str, bits: int) -> list[Vector]:
    return [v for v in VECTORS[name] if v.bits == bits][:SAMPLE_PER_LENGTH]


def _which(name: str) -> WrapMechanism:
    return KWP if name.startswith("KWP_") else KW


def _key_type(length: int) -> KeyType:
    return KeyType.AES if length in (16, 24, 32) else KeyType.GENERIC_SECRET


# -- SoftHSM tokens -------------------------------------------------------------------------


@dataclass
class Token:
    """One SoftHSM instance of the harness, opened as module, session pool and keyring."""

    module: Module
    keyring: Keyring

    @property
    def pool(self) -> SessionPool:
        return self.keyring.pool

    @property
    def mechanisms(self) -> Mechanisms:
        return self.keyring.mechanisms


@pytest.fixture(scope="module")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Token, Token]]:
    """Two independent SoftHSM tokens (separate copies of the module), opened in-process."""
    directory = tmp_path_factory.mktemp("keywrap") / "harness"
    harness: Harness = harness_up(directory, 2)
    opened: list[Token] = []
    try:
        for member in harness.members:
            module = Module.acquire(member.module, member.env)
            try:
                pool = SessionPool.acquire(module, TokenSelector(label=member.token_label),
                                           PinSource.parse(f"file:{harness.pin_file}"))
            except BaseException:
                module.release()
                raise
            opened.append(Token(module, Keyring(pool)))
            opened[-1].keyring.open()
        yield opened[0], opened[1]
    finally:
        for token in reversed(opened):
            token.pool.release()
            token.module.release()
        harness_down(directory)

@pytest.fixture(scope="module")
def token_a(tokens: tuple[Token, Token]) -> Token:
    return tokens[0]


@pytest.fixture(scope="module")
def token_b(tokens: tuple[Token, Token]) -> Token:
    return tokens[1]


def _secret(lease: Lease, value: bytes, *, wrapping: bool = False, token: bool = False,
            label: str | None = None) -> SecretKey:
    """A secret-key object with ``value``: a wrapping key, or an extractable key to wrap."""
    key_type = KeyType.AES if wrapping else _key_type(len(value))
    if wrapping:
        capabilities = Capability.WRAP | Capability.UNWRAP
    else:
        capabilities = Capability.ENCRYPT if key_type is KeyType.AES else Capability(0)
    template = KeyTemplate(key_type=key_type, capabilities=capabilities, token=token,
                           private=True, sensitive=wrapping, extractable=not wrapping,
                           label=label or "")
    return lease.create_key(template, value)


def _raw(key: SecretKey) -> Any:
    """The python-pkcs11 object behind ``key``, to poke the HSM directly (test-only)."""
    return key._obj


def _hsm_kcv(key: Any) -> str:
    """AES-ECB of a zero block under a python-pkcs11 key object, computed in the HSM."""
    return bytes(key.encrypt(bytes(16), mechanism=Mechanism.AES_ECB))[:3].hex()


def _expected_gcm_kcv(value: bytes) -> str:
    """The master-key KCV computed in software: AES-GCM of a zero block, zero IV, no AAD."""
    return AESGCM(value).encrypt(bytes(12), bytes(16), None)[:3].hex()


# -- mechanism mapping ----------------------------------------------------------------------


def _mechanisms(*, kw: bool = True, pad: int | None = 0x210A,
                any_length: bool = False) -> Mechanisms:
    return Mechanisms(aes_key_wrap=kw, aes_key_wrap_pad=pad, kwp_any_length=any_length,
                      aes_gcm=True, gcm_iv="caller")


def test_kw_maps_to_ckm_aes_key_wrap() -> None:
    """KW is CKM_AES_KEY_WRAP (0x2109) whenever the probe found RFC 3394 output."""
    assert pkcs11_mechanism(KW, _mechanisms()) == 0x2109
    assert pkcs11_mechanism(KW, _mechanisms(), length=40) == 0x2109


def test_kwp_maps_to_the_probed_number() -> None:
    """KWP is whichever mechanism number the probe found RFC 5649 output under."""
    assert pkcs11_mechanism(KWP, _mechanisms(pad=0x210A)) == 0x210A
    assert pkcs11_mechanism(KWP, _mechanisms(pad=0x210B, any_length=True), length=20) == 0x210B


def test_missing_mechanisms_are_refused_with_a_clear_message() -> None:
    """A module without KW or without any RFC 5649 mechanism gets MechanismUnsupported."""
    with pytest.raises(MechanismUnsupported, match="RFC 3394"):
        pkcs11_mechanism(KW, _mechanisms(kw=False))
    with pytest.raises(MechanismUnsupported, match="RFC 5649"):
        pkcs11_mechanism(KWP, _mechanisms(pad=None))


def test_kwp_of_odd_length_is_refused_where_the_module_zero_pads() -> None:
    """KWP of a length that is not a multiple of 8 is refused unless kwp_any_length."""
    with pytest.raises(MechanismUnsupported, match="multiple of 8"):
        pkcs11_mechanism(KWP, _mechanisms(any_length=False), length=20)
    assert pkcs11_mechanism(KWP, _mechanisms(any_length=False), length=24) == 0x210A


def test_kw_of_a_length_rfc3394_cannot_wrap_is_refused() -> None:
    """KW of fewer than 16 bytes or of a length not a multiple of 8 is InvalidInput."""
    for length in (8, 20, 31):
        with pytest.raises(InvalidInput, match="use KWP"):
            pkcs11_mechanism(KW, _mechanisms(), length=length)


def test_softhsm_probe_matches_the_documented_quirks(token_a: Token) -> None:
    """SoftHSM 2.6 gives RFC 5649 under 0x210A, and only for multiples of 8 bytes."""
    mechanisms = token_a.mechanisms
    assert mechanisms.aes_key_wrap
    assert mechanisms.aes_key_wrap_pad == 0x210A
    assert mechanisms.kwp_any_length is False


# -- NIST vectors through the HSM ----------------------------------------------------------


@pytest.mark.parametrize(("name", "bits"), _cases("_AE_"))
def test_wrap_matches_nist_vectors(token_a: Token, name: str, bits: int) -> None:
    """C_WrapKey of P under K gives the vector's C (KWP of odd lengths: refused on SoftHSM)."""
    which = _which(name)
    mechanisms = token_a.mechanisms
    vectors = _sample(name, bits)
    assert len(vectors) == SAMPLE_PER_LENGTH
    with token_a.pool.session() as lease:
        for vector in vectors:
            assert vector.p is not None
            wrapper = _secret(lease, vector.k, wrapping=True)
            target = _secret(lease, vector.p)
            try:
                if which is KWP and len(vector.p) % 8 and not mechanisms.kwp_any_length:
                    with pytest.raises(MechanismUnsupported, match="multiple of 8"):
                        wrap_key_object(lease, wrapper, target, which, mechanisms)
                else:
                    assert wrap_key_object(lease, wrapper, target, which,
                                           mechanisms) == vector.c, vector.name
            finally:
                target.destroy()
                wrapper.destroy()


def _unwrap_test_key(lease: Lease, wrapper: SecretKey, blob: bytes, which: WrapMechanism,
                     mechanisms: Mechanisms, key_type: KeyType) -> SecretKey:
    """Unwrap into an extractable, non-sensitive session key: test-only, to read its value."""
    return unwrap_key_object(lease, wrapper, blob, which, mechanisms, key_type=key_type,
                             label="nist-vector", key_id=b"nist", token=False,
                             extractable=True, sensitive=False, capabilities=NO_CAPABILITIES)


@pytest.mark.parametrize(("name", "bits"), _cases("_AD_"))
def test_unwrap_matches_nist_vectors(token_a: Token, name: str, bits: int) -> None:
    """C_UnwrapKey of C under K gives P, and every FAIL vector raises InvalidCiphertext."""
    which = _which(name)
    vectors = _sample(name, bits)
    assert len(vectors) == SAMPLE_PER_LENGTH
    key_type = _key_type(bits // 8)
    with token_a.pool.session() as lease:
        for vector in vectors:
            wrapper = _secret(lease, vector.k, wrapping=True)
            try:
                if vector.p is None:
                    with pytest.raises(InvalidCiphertext):
                        _unwrap_test_key(lease, wrapper, vector.c, which, token_a.mechanisms,
                                         key_type)
                    continue
                key = _unwrap_test_key(lease, wrapper, vector.c, which, token_a.mechanisms,
                                       key_type)
                try:
                    assert bytes(_raw(key)[Attribute.VALUE]) == vector.p, vector.name
                finally:
                    key.destroy()
            finally:
                wrapper.destroy()

def test_vector_sample_covers_fail_cases() -> None:
    """The sampled decrypt vectors include FAIL cases for both KW and KWP."""
    for name in ("KW_AD_256.txt", "KWP_AD_256.txt"):
        sampled = [v for n, bits in LENGTHS if n == name for v in _sample(name, bits)]
        assert any(v.p is None for v in sampled), name
        assert any(v.p is not None for v in sampled), name


def test_unwrap_refuses_blobs_no_key_wrap_can_produce(token_a: Token) -> None:
    """A blob whose length is impossible for KW or KWP is InvalidCiphertext without an HSM call."""
    with token_a.pool.session() as lease:
        for which, blob in ((KW, bytes(16)), (KW, bytes(41)), (KWP, bytes(8)), (KWP, b"")):
            with pytest.raises(InvalidCiphertext):
                unwrap_key_object(lease, "no such key", blob, which, token_a.mechanisms,
                                  key_type=KeyType.AES, label="x", key_id=b"x", token=False)


def test_wrap_of_a_non_extractable_key_is_refused(token_a: Token) -> None:
    """The HSM refuses to wrap a non-extractable key; the error is OperationFailed."""
    with token_a.pool.session() as lease:
        wrapper = _secret(lease, os.urandom(32), wrapping=True)
        locked = lease.generate_key(KeyTemplate(
            key_type=KeyType.AES, capabilities=Capability.ENCRYPT, token=False, private=True,
            sensitive=True, extractable=False), 32)
        try:
            with pytest.raises(OperationFailed) as caught:
                wrap_key_object(lease, wrapper, locked, KWP, token_a.mechanisms)
            assert caught.value.reason is Reason.KEY_UNEXTRACTABLE
        finally:
            locked.destroy()
            wrapper.destroy()


# -- between two tokens ---------------------------------------------------------------------


@pytest.mark.parametrize("which", [KW, KWP])
def test_key_moves_between_tokens(token_a: Token, token_b: Token, which: WrapMechanism) -> None:
    """A key wrapped on token A unwraps on token B into a non-extractable key, same KCV."""
    kek = os.urandom(32)
    kek_label = f"kek-{uuid.uuid4()}"
    moved_label = f"moved-{uuid.uuid4()}"
    with token_a.pool.session() as a, token_b.pool.session() as b:
        wrapper_a = _secret(a, kek, wrapping=True, label=kek_label)
        wrapper_b = _secret(b, kek, wrapping=True, label=kek_label)
        other_b = _secret(b, os.urandom(32), wrapping=True)
        key = a.generate_key(KeyTemplate(
            key_type=KeyType.AES, capabilities=Capability.ENCRYPT | Capability.DECRYPT,
            token=False, private=True, sensitive=True, extractable=True), 32)
        made: list[SecretKey] = [key, wrapper_a, wrapper_b, other_b]
        try:
            blob = wrap_key_object(a, kek_label, key, which, token_a.mechanisms)
            assert len(blob) == 40
            moved = unwrap_key_object(
                b, kek_label, blob, which, token_b.mechanisms, key_type=KeyType.AES,
                label=moved_label, key_id=b"moved", token=True,
            )
            made.append(moved)
            check_value = key.check_value()
            assert check_value is not None
            assert _hsm_kcv(_raw(moved)) == _hsm_kcv(_raw(key)) == check_value.hex()
            assert moved.kcv() == key.kcv() == check_value.hex()
            attrs = moved.read([Attr.EXTRACTABLE, Attr.SENSITIVE, Attr.PRIVATE, Attr.TOKEN,
                                Attr.SIGN, Attr.DERIVE, Attr.WRAP, Attr.UNWRAP])
            assert attrs == {Attr.EXTRACTABLE: False, Attr.SENSITIVE: True,
                             Attr.PRIVATE: True, Attr.TOKEN: True, Attr.SIGN: False,
                             Attr.DERIVE: False, Attr.WRAP: False, Attr.UNWRAP: False}
            with pytest.raises(AttributeSensitive):
                _raw(moved)[Attribute.VALUE]
            with pytest.raises(OperationFailed):
                wrap_key_object(b, wrapper_b, moved, which, token_b.mechanisms)
            with pytest.raises(InvalidCiphertext):
                unwrap_key_object(b, other_b, blob, which, token_b.mechanisms,
                                  key_type=KeyType.AES, label="wrong", key_id=b"w", token=False)
        finally:
            for obj in reversed(made):
                obj.destroy()


# -- importing customer key material --------------------------------------------------------


@pytest.fixture
def import_kek(token_a: Token) -> Iterator[tuple[str, bytes]]:
    """A wrapping key for imports, a token object on token A: (label, value)."""
    value = os.urandom(32)
    label = f"import-kek-{uuid.uuid4()}"
    with token_a.pool.session() as lease:
        _secret(lease, value, wrapping=True, token=True, label=label)
    yield label, value
    with token_a.pool.session() as lease:
        for key in lease.find_keys(label):
            key.destroy()


def _master_key(token: Token, key_id: str) -> SecretKey:
    """The key object of master key ``key_id`` version 1, found by its label."""
    with token.pool.session() as lease:
        found = lease.find_keys(label_for(key_id, 1))
    assert len(found) == 1
    return found[0]


def _master_labels(token: Token) -> set[str]:
    with token.pool.session() as lease:
        labels = {key.label() for key in lease.find_keys()}
    return {label for label in labels if label.startswith("hsm/")}


@pytest.mark.parametrize("which", [KW, KWP])
def test_import_wrapped_key_makes_a_locked_master_key(
    token_a: Token, import_kek: tuple[str, bytes], which: WrapMechanism,
) -> None:
    """An imported key is a new version-1 master key: locked in the HSM (ENCRYPT/DECRYPT
    only, not modifiable, AES-GCM only), with the right KCV."""
    label, kek = import_kek
    material = os.urandom(32)
    wrap = keywrap.aes_key_wrap if which is KW else keywrap.aes_key_wrap_with_padding
    info = import_wrapped_key(token_a.keyring, wrap(kek, material),
                              wrapping_key_label=label, which=which)
    assert info.version == 1
    assert str(uuid.UUID(info.key_id)) == info.key_id
    assert info.kcv == _expected_gcm_kcv(material)
    key = _master_key(token_a, info.key_id)
    attrs = key.read([Attr.EXTRACTABLE, Attr.SENSITIVE, Attr.PRIVATE, Attr.TOKEN,
                      Attr.KEY_TYPE, Attr.ENCRYPT, Attr.DECRYPT, Attr.WRAP, Attr.UNWRAP,
                      Attr.SIGN, Attr.VERIFY, Attr.DERIVE, Attr.ID, Attr.MODIFIABLE,
                      Attr.ALLOWED_MECHANISMS])
    assert attrs == {
        Attr.EXTRACTABLE: False, Attr.SENSITIVE: True, Attr.PRIVATE: True, Attr.TOKEN: True,
        Attr.KEY_TYPE: KeyType.AES, Attr.ENCRYPT: True, Attr.DECRYPT: True, Attr.WRAP: False,
        Attr.UNWRAP: False, Attr.SIGN: False, Attr.VERIFY: False, Attr.DERIVE: False,
        Attr.ID: uuid.UUID(info.key_id).bytes + (1).to_bytes(4, "big"),
        Attr.MODIFIABLE: False, Attr.ALLOWED_MECHANISMS: (int(Mechanism.AES_GCM),),
    }
    with pytest.raises(AttributeSensitive):
        _raw(key)[Attribute.VALUE]
    with pytest.raises(MechanismInvalid):
        _hsm_kcv(_raw(key))
    assert key.kcv_gcm() == info.kcv


def test_imported_key_seals_and_opens_with_keyring(
    token_a: Token, import_kek: tuple[str, bytes],
) -> None:
    """An imported master key is usable by Keyring.wrap and Keyring.unwrap under default policy."""
    label, kek = import_kek
    info = import_wrapped_key(token_a.keyring, keywrap.aes_key_wrap_with_padding(
        kek, os.urandom(32)), wrapping_key_label=label)
    keyring = Keyring(token_a.pool).open()  # default policy, on the open pool
    blob = keyring.wrap(info.key_id, b"data key material", {"tenant": "acme"})
    assert keyring.unwrap(blob, {"tenant": "acme"}) == b"data key material"


def test_imported_key_works_for_keyring_when_value_len_is_waived(
    token_a: Token, import_kek: tuple[str, bytes],
) -> None:
    """With the VALUE_LEN check waived, Keyring seals and opens data under an imported key."""
    label, kek = import_kek
    info = import_wrapped_key(token_a.keyring, keywrap.aes_key_wrap_with_padding(
        kek, os.urandom(32)), wrapping_key_label=label)
    keyring = Keyring(token_a.pool, allow_unsafe_keys=True).open()
    blob = keyring.wrap(info.key_id, b"data key material", {"tenant": "acme"})
    assert keyring.unwrap(blob, {"tenant": "acme"}) == b"data key material"
    with pytest.raises(InvalidCiphertext):
        keyring.unwrap(blob, {"tenant": "other"})


def test_list_keys_shows_the_imported_kcv(token_a: Token, import_kek: tuple[str, bytes]) -> None:
    """Keyring.list_keys reports an imported key with its key check value."""
    label, kek = import_kek
    material = os.urandom(32)
    info = import_wrapped_key(token_a.keyring, keywrap.aes_key_wrap_with_padding(kek, material),
                              wrapping_key_label=label)
    listed = [k for k in token_a.keyring.list_keys() if k.key_id == info.key_id]
    assert [k.kcv for k in listed] == [_expected_gcm_kcv(material)]


def test_import_refusals_leave_no_key_behind(
    token_a: Token, import_kek: tuple[str, bytes],
) -> None:
    """Wrong KEK, tampering, wrong length, unknown KEK and non-AES-256 material all leave no key."""
    label, kek = import_kek
    keyring = token_a.keyring
    before = _master_labels(token_a)
    good = keywrap.aes_key_wrap_with_padding(kek, os.urandom(32))
    tampered = bytes([good[0] ^ 1]) + good[1:]
    with pytest.raises(InvalidCiphertext):
        import_wrapped_key(keyring, keywrap.aes_key_wrap_with_padding(os.urandom(32),
                                                                      os.urandom(32)),
                           wrapping_key_label=label)
    with pytest.raises(InvalidCiphertext):
        import_wrapped_key(keyring, tampered, wrapping_key_label=label)
    with pytest.raises(InvalidCiphertext):
        import_wrapped_key(keyring, good, wrapping_key_label=label, which=KW)
    with pytest.raises(InvalidInput, match="40 bytes"):
        import_wrapped_key(keyring, keywrap.aes_key_wrap_with_padding(kek, os.urandom(16)),
                           wrapping_key_label=label)
    with pytest.raises(InvalidInput, match="not an AES-256 key"):
        import_wrapped_key(keyring, keywrap.aes_key_wrap_with_padding(kek, os.urandom(25)),
                           wrapping_key_label=label)
    with pytest.raises(KeyNotFound):
        import_wrapped_key(keyring, good, wrapping_key_label=f"missing-{uuid.uuid4()}")
    assert _master_labels(token_a) == before
    info = import_wrapped_key(keyring, good, wrapping_key_label=label)
    assert _master_labels(token_a) == before | {label_for(info.key_id, 1)}

