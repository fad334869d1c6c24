"""The envelope message format v1 (hsm.envelope.format) without an HSM.

What is here: the format re-built independently from its documentation (HKDF from
``cryptography``, frames from bare AES-GCM), AES-GCM itself against NIST vectors, the golden
messages of every format version, the bounds the parser enforces before it reads, and a
fuzz of the parser. Data keys are sealed in software by :class:`SoftSealer`, which does
what the HSM does (``hsm.keys.blob`` v1), so nothing here needs a token.
"""

from __future__ import annotations

import io
import json
import struct
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, BinaryIO, cast
from unittest import mock

import cryptography_vectors
import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hsm import envelope
from hsm.context import MAX_ENCODED, MAX_PAIRS, encode_context
from hsm.envelope import format as fmt
from hsm.errors import HSMError, InvalidCiphertext, InvalidInput, KeyNotFound, Reason
from hsm.keys import DataKey
from hsm.keys.blob import MAX_SIZE as MAX_BLOB
from hsm.keys.blob import MIN_SIZE as MIN_BLOB
from hsm.keys.blob import SealedBlob, parse_fields

GOLDEN = Path(__file__).parent / "golden"
FUZZ = settings(max_examples=150, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])

# -- helpers --------------------------------------------------------------------------------


class SoftSealer:
    """Seals data keys the way the HSM does (AES-256-GCM, AAD = blob header || encoded
    context), in software, so that messages can be made and opened without a token."""

    def __init__(self, master: bytes, key_id: str, version: int = 1) -> None:
        self.master = master
        self.key_uuid = uuid.UUID(key_id).bytes
        self.key_id = key_id
        self.version = version
        self.unwraps = 0

    def seal(self, data_key: bytes, context: Mapping[str, str] | None, iv: bytes) -> bytes:
        header = SealedBlob.header_for(self.key_uuid, self.version, iv)
        return header + AESGCM(self.master).encrypt(iv, data_key,
                                                     header + encode_context(context))

    def data_key(self, plaintext: bytes, context: Mapping[str, str] | None,
                 iv: bytes = bytes(12)) -> DataKey:
        return DataKey(self.key_id, self.version, bytearray(plaintext),
                       self.seal(plaintext, context, iv))

    def unwrap(self, blob: bytes, context: dict[str, str]) -> bytearray:
        """The :data:`hsm.envelope.Unwrapper` contract, with the HSM's errors."""
        self.unwraps += 1
        key_uuid, version, iv, sealed, header = parse_fields(blob)
        if (key_uuid, version) != (self.key_uuid, self.version):
            raise KeyNotFound("no such master key")
        try:
            return bytearray(AESGCM(self.master).decrypt(iv, sealed,
                                                         header + encode_context(context)))
        except InvalidTag:
            raise InvalidCiphertext("ciphertext does not verify", reason=Reason.TAG) from None


class RecordingReader:
    """A reader over bytes that records every size asked for (to prove what is allocated)."""

    def __init__(self, data: bytes) -> None:
        self._src = io.BytesIO(data)
        self.sizes: list[int] = []

    def read(self, size: int = -1, /) -> bytes:
        self.sizes.append(size)
        return self._src.read(size)


class Dribble(io.RawIOBase):
    """A raw stream that returns at most ``chunk`` bytes per read, as pipes and sockets
    may: a short read is not the end of the stream."""

    def __init__(self, data: bytes, chunk: int = 100) -> None:
        self._src = io.BytesIO(data)
        self._chunk = chunk

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._src.read(min(len(buffer), self._chunk))
        buffer[: len(data)] = data
        return len(data)


@contextmanager
def fixed_message_id(message_id: bytes) -> Iterator[None]:
    """Make :func:`hsm.envelope.format.write_header` use ``message_id``."""

    def urandom(size: int) -> bytes:
        assert size == len(message_id)
        return message_id

    with mock.patch.object(fmt, "os", SimpleNamespace(urandom=urandom)):
        yield


def hkdf(data_key: bytes, message_id: bytes, info: bytes) -> bytes:
    """RFC 5869 HKDF-SHA256, 32 bytes, from ``cryptography`` (the reference)."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=message_id,
                info=info).derive(data_key)


def independent_message(data_key: bytes, message_id: bytes, blob: bytes,
                        context: Mapping[str, str] | None, frame_size: int,
                        plaintext: bytes) -> bytes:
    """A v1 message built from ``docs/FORMAT.md`` alone, with bare AES-GCM and HKDF."""
    key = hkdf(data_key, message_id, b"hsm-envelope/v1 data")
    commitment = hkdf(data_key, message_id, b"hsm-envelope/v1 commit")
    ctx = encode_context(context)
    raw = (b"HSME" + bytes([1, 1]) + frame_size.to_bytes(4, "big") + message_id
           + len(blob).to_bytes(2, "big") + blob + len(ctx).to_bytes(2, "big") + ctx
           + commitment)
    gcm = AESGCM(key)
    out = [raw, gcm.encrypt(bytes(12), b"", raw)]
    chunks = [plaintext[i:i + frame_size] for i in range(0, len(plaintext), frame_size)]
    chunks = chunks or [b""]
    for seq, chunk in enumerate(chunks, start=1):
        final = seq == len(chunks)
        nonce = bytes(4) + seq.to_bytes(8, "big")
        aad = message_id + seq.to_bytes(8, "big") + bytes([final]) + len(chunk).to_bytes(4, "big")
        sealed = gcm.encrypt(nonce, chunk, aad)
        out.append(b"\x01" + len(chunk).to_bytes(4, "big") + sealed if final
                   else b"\x00" + sealed)
    return b"".join(out)


MASTER = bytes(range(32))
KEY_ID = "5b0e7f3c-2a51-4c1e-9d8e-6f2a0b9c1d3e"
SEALER = SoftSealer(MASTER, KEY_ID)
DATA_KEY = bytes(range(100, 132))
MESSAGE_ID = bytes(range(200, 232))
CTX = {"tenant": "acme"}


def soft_message(plaintext: bytes, *, context: Mapping[str, str] | None = CTX,
                 frame_size: int = fmt.FRAME_MIN, data_key: bytes = DATA_KEY,
                 message_id: bytes = MESSAGE_ID) -> bytes:
    """A message made by :func:`hsm.envelope.encrypt` with fixed keys, sealed in software."""
    with fixed_message_id(message_id):
        return envelope.encrypt(plaintext, SEALER.data_key(data_key, context), context,
                                frame_size=frame_size)


def header_bytes(*, frame_size: int = fmt.FRAME_MIN, blob_len: int | None = None,
                 blob: bytes | None = None, ctx_len: int | None = None,
                 ctx: bytes = b"\x00\x00", version: int = 1, suite: int = 1) -> bytes:
    """A header with chosen (possibly lying) fields, up to the commitment; tag not valid."""
    blob = SEALER.seal(DATA_KEY, {}, bytes(12)) if blob is None else blob
    return (struct.pack(">4sBBI32sH", b"HSME", version, suite, frame_size, MESSAGE_ID,
                        len(blob) if blob_len is None else blob_len) + blob
            + struct.pack(">H", len(ctx) if ctx_len is None else ctx_len) + ctx
            + bytes(32) + bytes(16))


# -- the construction, checked independently ---------------------------------------------


def test_hkdf_matches_rfc5869() -> None:
    """message_keys is HKDF-SHA256 (salt = message id) with the documented info strings."""
    for data_key, message_id in [(DATA_KEY, MESSAGE_ID), (bytes(32), bytes(32)),
                                 (b"\xff" * 32, bytes(range(32)))]:
        keys = fmt.message_keys(data_key, message_id)
        assert keys.commitment == hkdf(data_key, message_id, b"hsm-envelope/v1 commit")
        reference = AESGCM(hkdf(data_key, message_id, b"hsm-envelope/v1 data"))
        nonce = bytes(12)
        assert keys.aead.encrypt(nonce, b"probe", b"aad") == reference.encrypt(
            nonce, b"probe", b"aad")


def test_hkdf_known_answer() -> None:
    """The derived commitment for fixed inputs never changes (a known answer)."""
    keys = fmt.message_keys(DATA_KEY, MESSAGE_ID)
    assert keys.commitment == bytes.fromhex(
        json.loads((GOLDEN / "v1" / "manifest.json").read_text())["commitment_kat"])


@pytest.mark.parametrize("size", [0, 1, 1023, 1024, 1025, 2048, 3 * 1024 + 7])
def test_messages_match_the_documented_construction(size: int) -> None:
    """encrypt writes byte for byte what FORMAT.md describes (nonce 0^32 || seq, AAD
    message_id || seq || type || length, header tag under nonce 0)."""
    plaintext = bytes(i % 251 for i in range(size))
    expected = independent_message(DATA_KEY, MESSAGE_ID, SEALER.seal(DATA_KEY, CTX, bytes(12)),
                                   CTX, fmt.FRAME_MIN, plaintext)
    assert soft_message(plaintext) == expected
    assert envelope.decrypt(expected, SEALER.unwrap, CTX) == plaintext


# -- NIST SP 800-38D vectors (AES-256, 96-bit IV, 128-bit tag) ------------------------------


@dataclass(frozen=True)
class GcmVector:
    """One CAVS GCM case; ``pt`` is None for a FAIL case."""

    name: str
    key: bytes
    iv: bytes
    pt: bytes | None
    aad: bytes
    ct: bytes
    tag: bytes


def _gcm_vectors(filename: str, per_group: int) -> list[GcmVector]:
    """The first ``per_group`` cases of every 96-bit-IV, 128-bit-tag group of a file (and,
    in a decrypt file, the first FAIL case of each group as well)."""
    with cryptography_vectors.open_vector_file(f"ciphers/AES/GCM/{filename}", "r") as handle:
        lines = handle.read().splitlines()
    params: dict[str, str] = {}
    cases: list[dict[str, str]] = []
    case: dict[str, str] | None = None
    for raw in lines:
        line = raw.strip()
        if line.startswith("["):
            name, _, value = line.strip("[]").partition("=")
            params[name.strip()] = value.strip()
        elif line == "FAIL" and case is not None:
            case["FAIL"] = ""
        elif "=" in line and not line.startswith("#"):
            name, _, value = line.partition("=")
            if name.strip() == "Count":
                case = {**params}
                cases.append(case)
            if case is not None:
                case[name.strip()] = value.strip()
    chosen: list[GcmVector] = []
    taken: dict[tuple[str, ...], int] = {}
    for c in cases:
        if c["IVlen"] != "96" or c["Taglen"] != "128":
            continue
        group = (c["PTlen"], c["AADlen"], "FAIL" if "FAIL" in c else "ok")
        if taken.get(group, 0) >= (1 if "FAIL" in c else per_group):
            continue
        taken[group] = taken.get(group, 0) + 1
        chosen.append(GcmVector(
            name=f"{filename}[PT{c['PTlen']},AAD{c['AADlen']}]#{c['Count']}",
            key=bytes.fromhex(c["Key"]), iv=bytes.fromhex(c["IV"]),
            pt=None if "FAIL" in c else bytes.fromhex(c["PT"]),
            aad=bytes.fromhex(c["AAD"]), ct=bytes.fromhex(c["CT"]),
            tag=bytes.fromhex(c["Tag"])))
    return chosen


def test_aes_gcm_matches_nist_encrypt_vectors() -> None:
    """AES-256-GCM (as our frames call it: 96-bit nonce, AAD, 128-bit tag) gives the NIST
    ciphertext and tag for a sample of gcmEncryptExtIV256 cases of every length."""
    vectors = _gcm_vectors("gcmEncryptExtIV256.rsp", per_group=2)
    assert len(vectors) >= 50
    for v in vectors:
        assert v.pt is not None
        assert AESGCM(v.key).encrypt(v.iv, v.pt, v.aad) == v.ct + v.tag, v.name


def test_aes_gcm_matches_nist_decrypt_vectors() -> None:
    """AES-256-GCM opens the NIST gcmDecrypt256 cases and refuses every FAIL case."""
    vectors = _gcm_vectors("gcmDecrypt256.rsp", per_group=1)
    assert len(vectors) >= 40
    assert any(v.pt is None for v in vectors)
    for v in vectors:
        gcm = AESGCM(v.key)
        if v.pt is None:
            with pytest.raises(InvalidTag):
                gcm.decrypt(v.iv, v.ct + v.tag, v.aad)
        else:
            assert gcm.decrypt(v.iv, v.ct + v.tag, v.aad) == v.pt, v.name


# -- golden messages ------------------------------------------------------------------------


def _golden_cases() -> list[dict[str, Any]]:
    manifest = json.loads((GOLDEN / "v1" / "manifest.json").read_text())
    cases: list[dict[str, Any]] = manifest["cases"]
    return cases


def _golden_sealer() -> SoftSealer:
    manifest = json.loads((GOLDEN / "v1" / "manifest.json").read_text())
    return SoftSealer(bytes.fromhex(manifest["master_key"]), manifest["key_id"],
                      manifest["key_version"])


def golden_message(case: Mapping[str, Any]) -> bytes:
    """The bytes :func:`hsm.envelope.encrypt` makes today for a golden case's inputs."""
    sealer = _golden_sealer()
    data_key = sealer.data_key(bytes.fromhex(case["data_key"]), case["context"],
                               bytes.fromhex(case["blob_iv"]))
    with fixed_message_id(bytes.fromhex(case["message_id"])):
        return envelope.encrypt(bytes.fromhex(case["plaintext"]), data_key, case["context"],
                                frame_size=case["frame_size"])


@pytest.mark.parametrize("case", _golden_cases(), ids=lambda c: c["file"])
def test_golden_v1_messages_decrypt(case: dict[str, Any]) -> None:
    """Every stored v1 message still decrypts to its plaintext, with and without the
    caller passing its context, through a data key that opens only with that context."""
    message = (GOLDEN / "v1" / case["file"]).read_bytes()
    header = fmt.read_header(io.BytesIO(message))
    assert header.frame_size == case["frame_size"]
    assert header.context == case["context"]
    assert header.message_id.hex() == case["message_id"]
    expected_key = bytes.fromhex(case["data_key"])
    sealer = _golden_sealer()

    def unwrap(blob: bytes, context: dict[str, str]) -> bytearray:
        assert blob == header.blob
        data_key = sealer.unwrap(blob, context)
        assert data_key == expected_key
        return data_key

    plaintext = bytes.fromhex(case["plaintext"])
    assert envelope.decrypt(message, unwrap, case["context"]) == plaintext
    assert envelope.decrypt(message, unwrap) == plaintext


@pytest.mark.parametrize("case", _golden_cases(), ids=lambda c: c["file"])
def test_golden_v1_messages_are_reproduced(case: dict[str, Any]) -> None:
    """Encrypting a golden case's fixed inputs today gives the stored bytes exactly (a
    change of the v1 format is noticed), and so does the independent construction."""
    message = (GOLDEN / "v1" / case["file"]).read_bytes()
    assert golden_message(case) == message
    blob = fmt.read_header(io.BytesIO(message)).blob
    assert independent_message(
        bytes.fromhex(case["data_key"]), bytes.fromhex(case["message_id"]), blob,
        case["context"], case["frame_size"], bytes.fromhex(case["plaintext"])) == message


def test_golden_files_cover_every_format_version() -> None:
    """There is a golden folder for each format version the reader knows (only v1 today)."""
    assert sorted(p.name for p in GOLDEN.iterdir() if p.is_dir()) == [
        f"v{n}" for n in range(1, fmt.VERSION + 1)]
    files = {c["file"] for c in _golden_cases()}
    assert files == {p.name for p in (GOLDEN / "v1").glob("*.bin")}


# -- bounds: checked before anything is read or allocated ---------------------------------


def _refused_before_reading(data: bytes, bound: int) -> InvalidCiphertext:
    reader = RecordingReader(data + bytes(70_000))  # enough bytes to satisfy a lying length
    with pytest.raises(InvalidCiphertext) as info:
        fmt.read_header(reader)
    assert info.value.reason == "malformed"
    assert all(0 <= size <= bound for size in reader.sizes), reader.sizes
    return info.value


@pytest.mark.parametrize("frame_size", [0, 1, fmt.FRAME_MIN - 1, fmt.FRAME_MAX + 1, 2**32 - 1])
def test_frame_size_out_of_bounds_is_malformed(frame_size: int) -> None:
    """A frame size field outside 1024 .. 16 MiB is refused after the 44-byte prefix."""
    _refused_before_reading(header_bytes(frame_size=frame_size), 44)


@pytest.mark.parametrize("blob_len", [0, 1, MIN_BLOB - 1, MAX_BLOB + 1, 2**16 - 1])
def test_blob_length_out_of_bounds_is_malformed(blob_len: int) -> None:
    """A sealed-key length outside 55 .. 1078 is refused before the blob is read."""
    _refused_before_reading(header_bytes(blob_len=blob_len), 44)


@pytest.mark.parametrize("ctx_len", [0, 1, MAX_ENCODED + 1, 2**16 - 1])
def test_context_length_out_of_bounds_is_malformed(ctx_len: int) -> None:
    """A context length outside 2 .. 8192 is refused before the context is read."""
    _refused_before_reading(header_bytes(ctx_len=ctx_len), MAX_BLOB)


def test_context_with_too_many_pairs_is_malformed() -> None:
    """A header context with more pairs than an encryption context may have (64) is
    malformed: it is refused by the parser, never handed to the HSM."""
    keys = [f"k{i:03d}".encode() for i in range(MAX_PAIRS + 1)]
    ctx = struct.pack(">H", len(keys)) + b"".join(
        struct.pack(">H", len(k)) + k + struct.pack(">H", 0) for k in keys)
    header, _, _ = fmt.write_header(fmt.FRAME_MIN, SEALER.seal(DATA_KEY, {}, bytes(12)), ctx,
                                    DATA_KEY)
    _refused_before_reading(header, MAX_ENCODED)


@pytest.mark.parametrize(("version", "suite"), [(0, 1), (2, 1), (255, 1), (1, 0), (1, 2)])
def test_unknown_version_or_suite_is_malformed(version: int, suite: int) -> None:
    """A format version or algorithm suite this reader does not know is refused."""
    _refused_before_reading(header_bytes(version=version, suite=suite), 44)


def test_wrong_magic_is_malformed() -> None:
    """Bytes that do not start with HSME are not a message."""
    _refused_before_reading(b"HSMK" + header_bytes()[4:], 44)


@pytest.mark.parametrize("length", [fmt.FRAME_MIN + 1, 2**31, 2**32 - 1])
def test_final_frame_longer_than_the_frame_size_is_malformed(length: int) -> None:
    """A final frame announcing more than frame_size bytes is refused before its body
    is read."""
    message = soft_message(b"x" * 10)
    header = fmt.read_header(io.BytesIO(message))
    body = b"\x01" + struct.pack(">I", length) + bytes(70_000)
    reader = RecordingReader(message[: header.size] + body)
    header = fmt.read_header(reader)
    keys = fmt.check_header(header, DATA_KEY)
    reader.sizes.clear()
    with pytest.raises(InvalidCiphertext) as info:
        list(fmt.decrypt_frames(reader, keys, header))
    assert info.value.reason == "malformed"
    assert all(0 <= size <= 4 for size in reader.sizes), reader.sizes


def test_frames_are_read_one_at_a_time() -> None:
    """Decryption never asks for more than one frame (plus tag) at once."""
    message = soft_message(bytes(5 * fmt.FRAME_MIN + 3))
    reader = RecordingReader(message)
    header = fmt.read_header(reader)
    keys = fmt.check_header(header, DATA_KEY)
    assert len(list(fmt.decrypt_frames(reader, keys, header))) == 6
    assert max(reader.sizes) == fmt.FRAME_MIN + 16
    assert min(reader.sizes) >= 1


def test_number_of_frames_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """More frames than MAX_FRAMES: encrypt refuses to write them, decrypt to read them."""
    three_frames = soft_message(bytes(2 * fmt.FRAME_MIN + 1))
    monkeypatch.setattr(fmt, "MAX_FRAMES", 2)
    two_frames = soft_message(bytes(2 * fmt.FRAME_MIN))  # two frames are fine
    assert envelope.decrypt(two_frames, SEALER.unwrap, CTX) == bytes(2 * fmt.FRAME_MIN)
    with pytest.raises(InvalidInput):
        soft_message(bytes(2 * fmt.FRAME_MIN + 1))
    with pytest.raises(InvalidCiphertext) as info:
        envelope.decrypt(three_frames, SEALER.unwrap, CTX)
    assert info.value.reason == "malformed"


def test_write_header_refuses_a_frame_size_out_of_bounds() -> None:
    """encrypt with a frame size outside 1024 .. 16 MiB is a caller error."""
    for frame_size in (0, fmt.FRAME_MIN - 1, fmt.FRAME_MAX + 1):
        with pytest.raises(InvalidInput):
            soft_message(b"x", frame_size=frame_size)


# -- streams that return less than asked ------------------------------------------------------


@pytest.mark.parametrize("size", [0, 99, 1024, 5000])
def test_short_reads_do_not_truncate_the_plaintext(size: int) -> None:
    """encrypt_stream reads a stream that returns short reads (a pipe, a socket) to its
    end: the message holds all of it, with full frames."""
    plaintext = bytes(i % 253 for i in range(size))
    out = io.BytesIO()
    summary = envelope.encrypt_stream(cast(BinaryIO, Dribble(plaintext)), out,
                                      SEALER.data_key(DATA_KEY, CTX), CTX, frame_size=fmt.FRAME_MIN)
    assert summary.bytes_in == size
    assert envelope.decrypt(out.getvalue(), SEALER.unwrap, CTX) == plaintext
    assert len(out.getvalue()) == len(soft_message(plaintext))


def test_short_reads_are_not_taken_for_truncation() -> None:
    """decrypt_stream reads a message from a stream that returns short reads."""
    plaintext = bytes(i % 253 for i in range(5000))
    out = io.BytesIO()
    envelope.decrypt_stream(cast(BinaryIO, Dribble(soft_message(plaintext), chunk=7)), out,
                            SEALER.unwrap, CTX)
    assert out.getvalue() == plaintext


# -- fuzz -------------------------------------------------------------------------------------

VALID = soft_message(bytes(i % 256 for i in range(1500)))  # two frames
VALID_PLAINTEXT = bytes(i % 256 for i in range(1500))
_MUTATION = st.tuples(st.sampled_from(["insert", "delete", "replace"]),
                      st.integers(0, 1 << 20), st.binary(min_size=1, max_size=8))


def _mutate(data: bytes, mutations: list[tuple[str, int, bytes]]) -> bytes:
    for kind, where, chunk in mutations:
        pos = where % (len(data) + 1)
        if kind == "insert":
            data = data[:pos] + chunk + data[pos:]
        elif kind == "delete":
            data = data[:pos] + data[pos + len(chunk):]
        else:
            data = data[:pos] + chunk + data[pos + len(chunk):]
    return data


@FUZZ
@given(st.binary(max_size=2048))
def test_fuzz_random_bytes(data: bytes) -> None:
    """Random bytes never decrypt and raise only InvalidCiphertext."""
    with pytest.raises(InvalidCiphertext):
        fmt.read_header(io.BytesIO(data))
    with pytest.raises(HSMError):
        envelope.decrypt(data, SEALER.unwrap)


@FUZZ
@given(st.binary(max_size=600))
def test_fuzz_random_bytes_after_a_valid_prefix(tail: bytes) -> None:
    """Random bytes after a valid magic, version and suite raise only the package's errors."""
    data = b"HSME\x01\x01" + tail
    with suppress(InvalidCiphertext):
        fmt.read_header(io.BytesIO(data))
    with pytest.raises(HSMError):
        envelope.decrypt(data, SEALER.unwrap, CTX)


@FUZZ
@given(st.lists(_MUTATION, min_size=1, max_size=4))
def test_fuzz_mutated_messages(mutations: list[tuple[str, int, bytes]]) -> None:
    """A valid message with bytes inserted, deleted or replaced never decrypts (unless the
    mutations cancel out) and raises only the package's errors."""
    data = _mutate(VALID, mutations)
    if data == VALID:
        assert envelope.decrypt(data, SEALER.unwrap, CTX) == VALID_PLAINTEXT
        return
    for context in (CTX, None):
        with pytest.raises(HSMError):
            envelope.decrypt(data, SEALER.unwrap, context)


@FUZZ
@given(st.lists(_MUTATION, min_size=1, max_size=3))
def test_fuzz_mutated_frames_under_the_right_key(mutations: list[tuple[str, int, bytes]]) -> None:
    """With the header intact and the key known, mutated frames raise only
    InvalidCiphertext and release no plaintext of a frame that does not verify."""
    header = fmt.read_header(io.BytesIO(VALID))
    body = VALID[header.size:]
    mutated = _mutate(body, mutations)
    if mutated == body:
        return
    out = io.BytesIO()
    with pytest.raises(InvalidCiphertext):
        envelope.decrypt_stream(io.BytesIO(VALID[: header.size] + mutated), out, SEALER.unwrap)
    assert VALID_PLAINTEXT.startswith(out.getvalue())
    assert len(out.getvalue()) % fmt.FRAME_MIN == 0
