"""Direct encryption (AWS KMS Encrypt semantics): up to 4096 bytes under a master key inside
the HSM, no data key; on a real SoftHSM token and on a cluster of in-memory members."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping

import pytest

import hsm
from hsm.cluster import Cluster, Operation, State
from hsm.keys import KeyInfo, parse_blob
from hsm.keys.blob import DIRECT, HEADER_SIZE, SEALED_KEY, TAG_SIZE, parse_fields
from hsm.testing.fakes import FakeKeyring, FakeMember


def unwrap(cluster: Cluster[FakeKeyring], blob: bytes,
           context: Mapping[str, str] | None = None) -> bytearray:
    return cluster.call(Operation.UNWRAP, lambda ring: ring.unwrap(blob, context))


def wrap(cluster: Cluster[FakeKeyring], key_id: str, plaintext: bytes,
         context: Mapping[str, str] | None = None) -> bytes:
    return cluster.call(Operation.WRAP, lambda ring: ring.wrap(key_id, plaintext, context))


def encrypt_direct(cluster: Cluster[FakeKeyring], key_id: str, plaintext: bytes,
                   context: Mapping[str, str] | None = None) -> bytes:
    return cluster.call(Operation.ENCRYPT_DIRECT,
                        lambda ring: ring.encrypt_direct(key_id, plaintext, context))


def decrypt_direct(cluster: Cluster[FakeKeyring], blob: bytes,
                   context: Mapping[str, str] | None = None) -> bytes:
    return cluster.call(Operation.DECRYPT_DIRECT, lambda ring: ring.decrypt_direct(blob, context))


CTX = {"tenant": "acme"}


def _relabel(blob: bytes, magic: bytes) -> bytes:
    """``blob`` with another magic: the header is AAD, so the tag must fail."""
    return magic + blob[4:]


# -- on SoftHSM, through the client ----------------------------------------------------------


@pytest.mark.parametrize("size", [1, 100, 4096])
def test_round_trip_up_to_4096_bytes(client: hsm.Client, master_key: KeyInfo, size: int) -> None:
    """1, 100 and 4096 bytes come back intact, in a blob of header + plaintext + tag."""
    plaintext = bytes(range(256)) * 16
    blob = client.encrypt_direct(master_key.key_id, plaintext[:size], context=CTX)
    assert isinstance(blob, bytes)
    assert blob[:4] == b"HSMD"
    assert len(blob) == HEADER_SIZE + size + TAG_SIZE
    opened = client.decrypt_direct(blob, context=CTX)
    assert isinstance(opened, bytes)
    assert opened == plaintext[:size]


def test_bytearray_and_memoryview_are_accepted(client: hsm.Client, master_key: KeyInfo,
                                               ) -> None:
    """Plaintext may be any bytes-like object."""
    for data in (bytearray(b"abc"), memoryview(b"abc")):
        blob = client.encrypt_direct(master_key.key_id, data)
        assert client.decrypt_direct(blob) == b"abc"


def test_blob_names_key_and_version(client: hsm.Client, master_key: KeyInfo) -> None:
    """A direct blob carries its master key id and version, so decrypt needs no key id."""
    blob = client.encrypt_direct(master_key.key_id, b"x")
    parsed = parse_blob(blob, DIRECT)
    assert parsed.key_id == master_key.key_id
    assert parsed.version == master_key.version


def test_every_encryption_is_fresh(client: hsm.Client, master_key: KeyInfo) -> None:
    """The same plaintext encrypts differently each time (a fresh IV per call)."""
    a = client.encrypt_direct(master_key.key_id, b"same", CTX)
    b = client.encrypt_direct(master_key.key_id, b"same", CTX)
    assert a != b


def test_4097_bytes_are_refused_with_a_pointer_to_envelope_encryption(
    client: hsm.Client, master_key: KeyInfo,
) -> None:
    """More than 4096 bytes raises InvalidInput naming client.encrypt and hsm encrypt."""
    with pytest.raises(hsm.InvalidInput) as info:
        client.encrypt_direct(master_key.key_id, bytes(4097), CTX)
    message = str(info.value)
    assert "4096" in message
    assert "client.encrypt(" in message
    assert "'hsm encrypt' without --direct" in message


@pytest.mark.parametrize("bad", [b"", "text", None, 42])
def test_empty_or_non_bytes_plaintext_is_refused(client: hsm.Client, master_key: KeyInfo,
                                                 bad: object) -> None:
    """Empty plaintext and anything that is not bytes-like raise InvalidInput."""
    with pytest.raises(hsm.InvalidInput):
        client.encrypt_direct(master_key.key_id, bad)  # type: ignore[arg-type]


def test_unknown_key_is_key_not_found(client: hsm.Client) -> None:
    """Encrypting under a key id the HSM does not hold raises KeyNotFound."""
    with pytest.raises(hsm.KeyNotFound):
        client.encrypt_direct(str(uuid.uuid4()), b"x")


@pytest.mark.parametrize(
    "other", [{"tenant": "acmf"}, {}, None, {"tenant": "acme", "x": ""}, {"Tenant": "acme"}],
)
def test_another_context_does_not_verify(client: hsm.Client, master_key: KeyInfo,
                                         other: dict[str, str] | None) -> None:
    """Decrypting under any other context raises InvalidCiphertext (an integrity error)."""
    blob = client.encrypt_direct(master_key.key_id, b"secret", CTX)
    with pytest.raises(hsm.InvalidCiphertext) as info:
        client.decrypt_direct(blob, other)
    assert info.value.kind is hsm.Kind.INTEGRITY


def test_context_encoding_is_injective(client: hsm.Client, master_key: KeyInfo) -> None:
    """A blob bound to {"a": "bc"} does not open under {"ab": "c"}; None equals {}."""
    blob = client.encrypt_direct(master_key.key_id, b"secret", {"a": "bc"})
    with pytest.raises(hsm.InvalidCiphertext):
        client.decrypt_direct(blob, {"ab": "c"})
    unbound = client.encrypt_direct(master_key.key_id, b"secret")
    assert client.decrypt_direct(unbound, {}) == b"secret"


def test_every_single_bit_flip_is_refused(client: hsm.Client, master_key: KeyInfo) -> None:
    """Flipping any bit of a direct blob gives a typed error, never plaintext."""
    blob = client.encrypt_direct(master_key.key_id, b"sixteen bytes!!!", CTX)
    for i in range(len(blob)):
        tampered = bytearray(blob)
        tampered[i] ^= 0x01
        # The key id and version bytes name another key, which does not exist.
        expected = (hsm.InvalidCiphertext, hsm.KeyNotFound) if 6 <= i < 26 \
            else hsm.InvalidCiphertext
        with pytest.raises(expected):
            client.decrypt_direct(bytes(tampered), CTX)


def test_truncated_or_extended_blob_is_refused(client: hsm.Client, master_key: KeyInfo) -> None:
    """A blob with bytes cut off or appended raises InvalidCiphertext."""
    blob = client.encrypt_direct(master_key.key_id, b"x" * 64, CTX)
    for damaged in (blob[:-1], blob[:HEADER_SIZE + TAG_SIZE], blob + b"\x00", blob[:10]):
        with pytest.raises(hsm.InvalidCiphertext):
            client.decrypt_direct(damaged, CTX)


def test_direct_blob_is_refused_by_unwrap(client: hsm.Client, master_key: KeyInfo) -> None:
    """unwrap refuses a direct blob as malformed, saying it is opened by decrypt_direct."""
    blob = client.encrypt_direct(master_key.key_id, bytes(32), CTX)
    with pytest.raises(hsm.InvalidCiphertext) as info:
        client.unwrap(blob, CTX)
    assert info.value.reason is hsm.Reason.MALFORMED
    assert "decrypt_direct" in str(info.value)


def test_sealed_key_is_refused_by_decrypt_direct(client: hsm.Client, master_key: KeyInfo,
                                                 ) -> None:
    """decrypt_direct refuses a sealed data key as malformed, saying it is opened by unwrap."""
    dk = client.generate_data_key(master_key.key_id, CTX)
    try:
        with pytest.raises(hsm.InvalidCiphertext) as info:
            client.decrypt_direct(dk.wrapped, CTX)
    finally:
        dk.wipe()
    assert info.value.reason is hsm.Reason.MALFORMED
    assert "unwrap" in str(info.value)


def test_relabelled_blobs_do_not_verify(client: hsm.Client, master_key: KeyInfo) -> None:
    """Rewriting the magic to pass one kind off as the other fails inside the HSM: the
    header, magic included, is authenticated."""
    direct = client.encrypt_direct(master_key.key_id, bytes(32), CTX)
    with pytest.raises(hsm.InvalidCiphertext) as info:
        client.unwrap(_relabel(direct, SEALED_KEY.magic), CTX)
    assert info.value.reason != "malformed"
    sealed = client.wrap(master_key.key_id, bytes(32), CTX)
    with pytest.raises(hsm.InvalidCiphertext) as info:
        client.decrypt_direct(_relabel(sealed, DIRECT.magic), CTX)
    assert info.value.reason != "malformed"


# -- the blob format -------------------------------------------------------------------------


def test_blob_kinds_have_their_own_bounds() -> None:
    """A direct blob may hold 4096 bytes; parsing checks magic and length per kind."""
    header = DIRECT.magic + bytes([1, 1]) + uuid.uuid4().bytes + (1).to_bytes(4, "big") \
        + bytes(12)
    largest = header + bytes(4096 + TAG_SIZE)
    assert parse_fields(largest, DIRECT)[3] == bytes(4096 + TAG_SIZE)
    with pytest.raises(hsm.InvalidCiphertext, match="impossible length"):
        parse_fields(largest + b"\x00", DIRECT)
    with pytest.raises(hsm.InvalidCiphertext, match="this is an hsm direct ciphertext"):
        parse_blob(largest)  # too long for a sealed data key: named for what it is
    with pytest.raises(hsm.InvalidCiphertext, match="impossible length"):
        parse_blob(b"XXXX" + largest[4:])
    with pytest.raises(hsm.InvalidCiphertext, match="not a sealed hsm data key"):
        parse_blob(header + bytes(48))
    with pytest.raises(hsm.InvalidCiphertext, match=r"not an hsm direct ciphertext$"):
        parse_blob(b"XXXX" + header[4:] + bytes(48), DIRECT)


def test_operations_are_idempotent() -> None:
    """Both direct calls may be repeated on another member (no state changes)."""
    assert Operation.ENCRYPT_DIRECT.idempotent
    assert Operation.DECRYPT_DIRECT.idempotent


# -- on a cluster of in-memory members -------------------------------------------------------


@pytest.fixture
def fakes() -> Iterator[tuple[Cluster[FakeKeyring], list[FakeMember], str]]:
    """Three in-memory members holding one key, as a cluster with no monitor thread."""
    members = [FakeMember(f"m{i}") for i in range(3)]
    cluster = Cluster(members, quorum=2, deadline_ms=500, monitor=False)
    cluster.open()
    key = cluster.create_key()
    yield cluster, members, key.key_id
    for member in members:
        member.heal()
    cluster.close()


def test_fake_members_round_trip_and_keep_kinds_apart(
    fakes: tuple[Cluster[FakeKeyring], list[FakeMember], str],
) -> None:
    """FakeMember makes the same direct blobs: round trip, and no confusion with unwrap."""
    cluster, _, key_id = fakes
    blob = encrypt_direct(cluster, key_id, b"x" * 4096, CTX)
    assert blob[:4] == b"HSMD"
    assert decrypt_direct(cluster, blob, CTX) == b"x" * 4096
    with pytest.raises(hsm.InvalidCiphertext, match="decrypt_direct"):
        unwrap(cluster, blob, CTX)
    with pytest.raises(hsm.InvalidInput, match=r"client\.encrypt\("):
        encrypt_direct(cluster, key_id, bytes(4097), CTX)


def test_direct_calls_fail_over(fakes: tuple[Cluster[FakeKeyring], list[FakeMember], str]) -> None:
    """A device error on the primary moves encrypt_direct and decrypt_direct on."""
    cluster, (a, b, _), key_id = fakes
    blob = encrypt_direct(cluster, key_id, b"payload", CTX)
    a.fail()
    assert decrypt_direct(cluster, blob, CTX) == b"payload"
    assert decrypt_direct(cluster, encrypt_direct(cluster, key_id, b"more", CTX), CTX) == b"more"
    assert b.calls["decrypt_direct"] == 2
    assert b.calls["encrypt_direct"] == 1
    assert cluster.state_of("m0") is State.DOWN


def test_a_faulty_member_cannot_turn_a_good_direct_blob_bad(
    fakes: tuple[Cluster[FakeKeyring], list[FakeMember], str],
) -> None:
    """Like unwrap: one member's "does not verify" is overruled by another, which serves."""
    cluster, (a, b, _), key_id = fakes
    blob = encrypt_direct(cluster, key_id, b"payload", CTX)
    a.corrupt = True
    assert decrypt_direct(cluster, blob, CTX) == b"payload"
    assert b.calls["decrypt_direct"] == 1
    assert cluster.state_of("m0") is State.DOWN


def test_tampering_is_confirmed_by_every_member(
    fakes: tuple[Cluster[FakeKeyring], list[FakeMember], str],
) -> None:
    """A tampered direct blob is refused by every member, then InvalidCiphertext stands."""
    cluster, members, key_id = fakes
    blob = bytearray(encrypt_direct(cluster, key_id, b"payload", CTX))
    blob[-1] ^= 1
    with pytest.raises(hsm.InvalidCiphertext):
        decrypt_direct(cluster, bytes(blob), CTX)
    assert [m.calls["decrypt_direct"] for m in members] == [1, 1, 1]
    assert all(cluster.state_of(m.name) is State.HEALTHY for m in members)


def test_malformed_blob_is_refused_before_any_member(
    fakes: tuple[Cluster[FakeKeyring], list[FakeMember], str],
) -> None:
    """A blob that does not parse (a sealed data key, garbage) reaches no HSM: the first
    member's keyring refuses it by its structure, and no other member is asked."""
    cluster, members, key_id = fakes
    sealed = wrap(cluster, key_id, bytes(32), CTX)
    asked = []
    cluster.observer = lambda record: asked.append(record.member)
    for bad in (sealed, b"garbage"):
        with pytest.raises(hsm.InvalidCiphertext) as info:
            decrypt_direct(cluster, bad, CTX)
        assert info.value.reason is hsm.Reason.MALFORMED
    assert all(m.calls["decrypt_direct"] == 0 for m in members)
    assert asked == ["m0", "m0"]
    assert all(cluster.state_of(m.name) is State.HEALTHY for m in members)
