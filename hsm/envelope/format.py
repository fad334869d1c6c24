"""The envelope message, format version 1: a header, then the body in AES-256-GCM frames.

Header (all integers big-endian; ``docs/FORMAT.md`` has the same table)::

    magic        4   b"HSME"
    version      1   1
    suite        1   1 = AES-256-GCM frames, per-message keys by HKDF-SHA256, key commitment
    frame_size   4   uint32, FRAME_MIN .. FRAME_MAX bytes of plaintext per frame
    message_id  32   random; the HKDF salt, in every frame's AAD
    blob_len     2   uint16
    blob         n   the sealed data key (hsm.keys.blob): names master key id and version,
                     bound to the context inside the HSM
    ctx_len      2   uint16
    ctx          m   the encoded encryption context (hsm.context), readable by anyone
    commitment  32   HKDF-Expand(prk, "hsm-envelope/v1 commit")
    header_tag  16   AES-GCM tag, key K, nonce 0 (96 bits), AAD = every header byte above

Keys: ``prk = HMAC-SHA256(message_id, data key)`` (HKDF-Extract); ``K = HKDF-Expand(prk,
"hsm-envelope/v1 data")``, 32 bytes. The commitment is checked (constant time) before K is
used: one message can never decrypt under two data keys.

Body: frames numbered from 1. ``type`` is 0 for a regular frame (exactly ``frame_size``
bytes of plaintext) and 1 for the final frame (0 .. ``frame_size`` bytes, length written)::

    regular frame   type(1)=0                 ciphertext(frame_size)  tag(16)
    final frame     type(1)=1  length(4)      ciphertext(length)      tag(16)

    nonce = 0x00000000 || seq (uint64)
    AAD   = message_id || seq (uint64) || type (1) || length (uint32)

so truncating, reordering, duplicating frames, dropping the final frame or splicing frames
from another message all fail. Every message has exactly one final frame (an empty message
is a header and an empty final frame); bytes after it are refused. Every length is checked
against its bound before anything is allocated.
"""

from __future__ import annotations

import hmac
import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from hsm.context import MAX_ENCODED, MAX_PAIRS, decode_context
from hsm.errors import InvalidCiphertext, InvalidContext, InvalidInput, Reason
from hsm.keys.blob import MAX_SIZE as MAX_BLOB
from hsm.keys.blob import MIN_SIZE as MIN_BLOB
from hsm.keys.blob import parse_blob

__all__ = [
    "DEFAULT_FRAME",
    "FRAME_MAX",
    "FRAME_MIN",
    "MAGIC",
    "Header",
    "MessageKeys",
    "Readable",
    "decrypt_frames",
    "encrypt_frames",
    "message_keys",
    "read_header",
    "write_header",
]

MAGIC = b"HSME"
VERSION = 1
SUITE = 1
TAG = 16
ID_SIZE = 32
FRAME_MIN = 1024
FRAME_MAX = 16 * 1024 * 1024
DEFAULT_FRAME = 64 * 1024
MAX_FRAMES = 2**32 - 1

_PREFIX = struct.Struct(">4sBBI32sH")  # magic, version, suite, frame size, message id, blob_len
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_NONCE = struct.Struct(">4xQ")
_AAD_TAIL = struct.Struct(">QBI")
_HEADER_NONCE = bytes(12)
_INFO_DATA = b"hsm-envelope/v1 data\x01"
_INFO_COMMIT = b"hsm-envelope/v1 commit\x01"
REGULAR, FINAL = 0, 1


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


@dataclass(frozen=True)
class Header:
    """A parsed header. ``raw`` is every header byte before the tag (the tag's AAD)."""

    frame_size: int
    message_id: bytes
    blob: bytes
    context: dict[str, str]
    context_bytes: bytes
    commitment: bytes
    tag: bytes
    raw: bytes

    @property
    def key_id(self) -> str:
        return parse_blob(self.blob).key_id

    @property
    def key_version(self) -> int:
        return parse_blob(self.blob).version

    @property
    def size(self) -> int:
        return len(self.raw) + TAG


@dataclass(frozen=True)
class MessageKeys:
    """The per-message frame key and the commitment, derived from the data key."""

    aead: AESGCM
    commitment: bytes


def message_keys(data_key: bytes | bytearray, message_id: bytes) -> MessageKeys:
    """HKDF-SHA256 (RFC 5869) with ``message_id`` as salt; one 32-byte block each."""
    prk = hmac.digest(message_id, bytes(data_key), "sha256")
    key = hmac.digest(prk, _INFO_DATA, "sha256")
    return MessageKeys(AESGCM(key), hmac.digest(prk, _INFO_COMMIT, "sha256"))


def write_header(frame_size: int, blob: bytes, context_bytes: bytes,
                 data_key: bytes | bytearray) -> tuple[bytes, bytes, MessageKeys]:
    """``(header bytes, message id, keys)`` for a new message."""
    if not FRAME_MIN <= frame_size <= FRAME_MAX:
        raise InvalidInput(f"frame size must be {FRAME_MIN} to {FRAME_MAX} bytes")
    message_id = os.urandom(ID_SIZE)
    keys = message_keys(data_key, message_id)
    raw = b"".join((
        _PREFIX.pack(MAGIC, VERSION, SUITE, frame_size, message_id, len(blob)), blob,
        _U16.pack(len(context_bytes)), context_bytes, keys.commitment,
    ))
    tag = keys.aead.encrypt(_HEADER_NONCE, b"", raw)
    return raw + tag, message_id, keys


def _malformed(what: str) -> InvalidCiphertext:
    return InvalidCiphertext(f"not a valid hsm envelope message: {what}", reason=Reason.MALFORMED)


def _read_full(src: Readable, size: int) -> bytes:
    """``size`` bytes, or fewer only at the end of ``src``: a raw stream, a pipe or a socket
    may return less than asked long before its end."""
    data = src.read(size) or b""
    if len(data) == size or not data:
        return data
    parts = [data]
    got = len(data)
    while got < size:
        more = src.read(size - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def _read_exactly(src: Readable, size: int, what: str) -> bytes:
    data = _read_full(src, size)
    if len(data) != size:
        raise InvalidCiphertext(f"message is truncated (in the {what})", reason=Reason.TRUNCATED)
    return bytes(data)


def read_header(src: Readable) -> Header:
    """Read and bound-check a header from ``src`` (nothing is verified cryptographically
    yet: that needs the data key, see :func:`check_header`)."""
    prefix = _read_exactly(src, _PREFIX.size, "header")
    magic, version, suite, frame_size, message_id, blob_len = _PREFIX.unpack(prefix)
    if magic != MAGIC:
        raise _malformed("wrong magic")
    if version != VERSION:
        raise _malformed(f"unknown format version {version}")
    if suite != SUITE:
        raise _malformed(f"unknown algorithm suite {suite}")
    if not FRAME_MIN <= frame_size <= FRAME_MAX:
        raise _malformed("frame size out of bounds")
    if not MIN_BLOB <= blob_len <= MAX_BLOB:
        raise _malformed("sealed data key length out of bounds")
    blob = _read_exactly(src, blob_len, "header")
    (ctx_len,) = _U16.unpack(_read_exactly(src, 2, "header"))
    if ctx_len > MAX_ENCODED or ctx_len < 2:
        raise _malformed("context length out of bounds")
    context_bytes = _read_exactly(src, ctx_len, "header")
    try:
        context = decode_context(context_bytes)
    except InvalidContext:
        raise _malformed("context is not well formed") from None
    if len(context) > MAX_PAIRS:
        raise _malformed("context has too many pairs")
    commitment = _read_exactly(src, 32, "header")
    tag = _read_exactly(src, TAG, "header")
    raw = prefix + blob + _U16.pack(ctx_len) + context_bytes + commitment
    return Header(frame_size, message_id, blob, context, context_bytes, commitment, tag, raw)


def check_header(header: Header, data_key: bytes | bytearray) -> MessageKeys:
    """Verify the key commitment and the header tag; return the frame keys."""
    keys = message_keys(data_key, header.message_id)
    if not hmac.compare_digest(keys.commitment, header.commitment):
        raise InvalidCiphertext("ciphertext does not verify (key commitment)",
                                reason=Reason.COMMITMENT)
    try:
        keys.aead.decrypt(_HEADER_NONCE, header.tag, header.raw)
    except InvalidTag:
        raise InvalidCiphertext("ciphertext does not verify (header)",
                                reason=Reason.HEADER_TAG) from None
    return keys


def _aad(message_id: bytes, seq: int, kind: int, length: int) -> bytes:
    return message_id + _AAD_TAIL.pack(seq, kind, length)


def encrypt_frames(src: Readable, keys: MessageKeys, message_id: bytes, frame_size: int,
                   ) -> Iterator[bytes]:
    """Frames for everything ``src`` holds, the last one final. Reads ahead one frame to
    know which one is last; memory stays at two frames."""
    aead = keys.aead
    seq = 1
    current = _read_full(src, frame_size)
    while True:
        following = _read_full(src, frame_size) if len(current) == frame_size else b""
        if seq > MAX_FRAMES:
            raise InvalidInput("message is too long for its frame size")
        if following:
            yield b"\x00" + aead.encrypt(_NONCE.pack(seq), current,
                                         _aad(message_id, seq, REGULAR, frame_size))
            current = following
            seq += 1
            continue
        length = len(current)
        yield b"\x01" + _U32.pack(length) + aead.encrypt(
            _NONCE.pack(seq), current, _aad(message_id, seq, FINAL, length))
        return


def decrypt_frames(src: Readable, keys: MessageKeys, header: Header,
                   on_frame: Callable[[int], None] | None = None) -> Iterator[bytes]:
    """Plaintext of each frame, each verified before it is yielded; raises
    :class:`InvalidCiphertext` on any tamper, truncation, reordering or trailing bytes."""
    aead, message_id, frame_size = keys.aead, header.message_id, header.frame_size
    seq = 1
    while True:
        kind = src.read(1)
        if not kind:
            raise InvalidCiphertext("message is truncated (no final frame)",
                                    reason=Reason.TRUNCATED)
        if kind == b"\x00":
            length = frame_size
        elif kind == b"\x01":
            (length,) = _U32.unpack(_read_exactly(src, 4, "final frame"))
            if length > frame_size:
                raise _malformed("final frame longer than the frame size")
        else:
            raise _malformed("unknown frame type")
        body = _read_exactly(src, length + TAG, "frame")
        try:
            plaintext = aead.decrypt(_NONCE.pack(seq), body,
                                     _aad(message_id, seq, kind[0], length))
        except InvalidTag:
            raise InvalidCiphertext("ciphertext does not verify (frame)",
                                    reason=Reason.FRAME_TAG) from None
        if on_frame is not None:
            on_frame(len(body) + (1 if kind == b"\x00" else 5))
        yield plaintext
        if kind == b"\x01":
            if src.read(1):
                raise InvalidCiphertext("bytes after the final frame", reason=Reason.TRAILING)
            return
        seq += 1
        if seq > MAX_FRAMES:
            raise _malformed("too many frames")
