"""Master keys and data keys through the client, against a real SoftHSM token."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hsm
from hsm.keys import KeyInfo, parse_blob
from hsm.keys.blob import HEADER_SIZE

CTX = {"tenant": "acme"}


def test_data_key_round_trip(client: hsm.Client, master_key: KeyInfo) -> None:
    """A data key unwraps to the same 32 bytes under the same context."""
    dk = client.generate_data_key(master_key.key_id, context=CTX)
    assert isinstance(dk.plaintext, bytearray)
    assert len(dk.plaintext) == 32
    assert dk.key_id == master_key.key_id
    assert dk.version == 1
    assert client.unwrap(dk.wrapped, context=CTX) == dk.plaintext


def test_data_keys_are_fresh(client: hsm.Client, master_key: KeyInfo) -> None:
    """Two data keys differ, and so do two seals of the same key (fresh IVs)."""
    a = client.generate_data_key(master_key.key_id)
    b = client.generate_data_key(master_key.key_id)
    assert a.plaintext != b.plaintext
    assert client.wrap(master_key.key_id, bytes(32)) != client.wrap(master_key.key_id, bytes(32))


def test_wrap_and_unwrap_a_callers_key(client: hsm.Client, master_key: KeyInfo) -> None:
    """A caller's key material of any allowed length comes back intact."""
    for size in (1, 16, 32, 64, 1024):
        material = bytes(range(256)) * 4
        blob = client.wrap(master_key.key_id, material[:size], context={})
        assert client.unwrap(blob, context={}) == material[:size]


def test_blob_names_its_key_and_version(client: hsm.Client, master_key: KeyInfo) -> None:
    """The sealed blob carries the key id and version, so unwrap needs no key argument."""
    blob = client.wrap(master_key.key_id, bytes(32))
    parsed = parse_blob(blob)
    assert parsed.key_id == master_key.key_id
    assert parsed.version == 1
    assert len(blob) == HEADER_SIZE + 32 + 16


@pytest.mark.parametrize(
    "other", [{"tenant": "acmf"}, {}, {"tenant": "acme", "x": ""}, {"Tenant": "acme"}],
)
def test_another_context_is_refused(
    client: hsm.Client, master_key: KeyInfo, other: dict[str, str]
) -> None:
    """Unwrapping under any other context raises InvalidCiphertext."""
    dk = client.generate_data_key(master_key.key_id, context=CTX)
    with pytest.raises(hsm.InvalidCiphertext) as info:
        client.unwrap(dk.wrapped, context=other)
    assert info.value.kind is hsm.Kind.INTEGRITY


def test_shifted_context_is_refused(client: hsm.Client, master_key: KeyInfo) -> None:
    """A blob bound to {"a": "bc"} does not open under {"ab": "c"}."""
    blob = client.wrap(master_key.key_id, bytes(32), context={"a": "bc"})
    with pytest.raises(hsm.InvalidCiphertext):
        client.unwrap(blob, context={"ab": "c"})


def test_every_single_byte_change_is_refused(client: hsm.Client, master_key: KeyInfo) -> None:
    """Flipping any bit of any byte of a blob gives a typed error, never plaintext."""
    blob = client.wrap(master_key.key_id, bytes(32), context=CTX)
    for i in range(len(blob)):
        tampered = bytearray(blob)
        tampered[i] ^= 0x01
        with pytest.raises((hsm.InvalidCiphertext, hsm.KeyNotFound)):
            client.unwrap(bytes(tampered), context=CTX)
        if not 6 <= i < 26:  # outside the key id and version: it must be InvalidCiphertext
            with pytest.raises(hsm.InvalidCiphertext):
                client.unwrap(bytes(tampered), context=CTX)


def test_truncated_and_extended_blobs_are_refused(client: hsm.Client, master_key: KeyInfo) -> None:
    """Cutting or extending a blob gives InvalidCiphertext."""
    blob = client.wrap(master_key.key_id, bytes(32))
    for cut in (0, 1, 4, HEADER_SIZE, len(blob) - 1):
        with pytest.raises(hsm.InvalidCiphertext):
            client.unwrap(blob[:cut])
    with pytest.raises(hsm.InvalidCiphertext):
        client.unwrap(blob + b"\x00")


def test_a_blob_under_another_key_is_refused(client: hsm.Client, master_key: KeyInfo) -> None:
    """A blob whose key id is rewritten to another real key does not open."""
    other = client.create_key()
    blob = bytearray(client.wrap(master_key.key_id, bytes(32)))
    blob[6:22] = uuid.UUID(other.key_id).bytes
    with pytest.raises(hsm.InvalidCiphertext):
        client.unwrap(bytes(blob))


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=1200))
def test_arbitrary_bytes_give_only_typed_errors(client: hsm.Client, data: bytes) -> None:
    """Any bytes handed to unwrap raise one of the package's errors, nothing else."""
    with pytest.raises((hsm.InvalidCiphertext, hsm.KeyNotFound)):
        client.unwrap(data)


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(min_size=HEADER_SIZE - 38 + 1, max_size=200))
def test_well_formed_headers_with_random_bodies_are_refused(
    client: hsm.Client, master_key: KeyInfo, body: bytes
) -> None:
    """A valid header for a real key followed by random bytes never unwraps."""
    header = client.wrap(master_key.key_id, bytes(32))[:HEADER_SIZE]
    with pytest.raises(hsm.InvalidCiphertext):
        client.unwrap(header + body + bytes(16))


def test_unknown_key_ids_are_typed_errors(client: hsm.Client) -> None:
    """An unknown key id is KeyNotFound; a key id that is no UUID is InvalidInput."""
    with pytest.raises(hsm.KeyNotFound):
        client.generate_data_key(str(uuid.uuid4()))
    with pytest.raises(hsm.InvalidInput):
        client.generate_data_key("not-a-uuid")
    with pytest.raises(hsm.InvalidInput):
        client.wrap(123, bytes(32))  # type: ignore[arg-type]


def test_bad_key_material_is_refused(client: hsm.Client, master_key: KeyInfo) -> None:
    """Empty, oversized or non-bytes key material raises InvalidInput."""
    for bad in (b"", bytes(1025), "text", None):
        with pytest.raises(hsm.InvalidInput):
            client.wrap(master_key.key_id, bad)  # type: ignore[arg-type]


def test_bad_contexts_are_refused_before_the_hsm(client: hsm.Client, master_key: KeyInfo) -> None:
    """A context that is not str -> str raises InvalidContext on every call."""
    dk = client.generate_data_key(master_key.key_id)
    for bad in ({"a": 1}, ["a"], {"a": None}):
        with pytest.raises(hsm.InvalidContext):
            client.generate_data_key(master_key.key_id, context=bad)  # type: ignore[arg-type]
        with pytest.raises(hsm.InvalidContext):
            client.unwrap(dk.wrapped, context=bad)  # type: ignore[arg-type]


def test_data_key_can_be_wiped_and_hides_its_plaintext(
    client: hsm.Client, master_key: KeyInfo
) -> None:
    """DataKey's repr never shows the plaintext and wipe() zeroes it in place."""
    dk = client.generate_data_key(master_key.key_id)
    text = repr(dk)
    assert dk.plaintext.hex() not in text
    assert "hidden" in text
    buffer = dk.plaintext
    dk.wipe()
    assert buffer == bytearray(32)


def test_random_comes_from_the_hsm(client: hsm.Client) -> None:
    """generate_random returns the asked number of bytes and refuses silly sizes."""
    assert len(client.generate_random(1)) == 1
    assert len(client.generate_random(1024)) == 1024
    with pytest.raises(hsm.InvalidInput):
        client.generate_random(0)
