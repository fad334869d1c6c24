"""Envelope encryption of messages and streams: a fresh (or cached) data key per message,
sealed under an HSM master key; the data itself encrypted here in AES-256-GCM frames.

The data key never leaves this process in plaintext; the master key never leaves the HSM.
Format: :mod:`hsm.envelope.format` and ``docs/FORMAT.md``.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO

from hsm.context import encode_context
from hsm.envelope.format import (
    DEFAULT_FRAME,
    Header,
    MessageKeys,
    check_header,
    decrypt_frames,
    encrypt_frames,
    read_header,
    write_header,
)
from hsm.errors import ContextMismatch, InvalidCiphertext, InvalidInput, Reason
from hsm.keys import DataKey

__all__ = [
    "StreamSummary",
    "Unwrapper",
    "decrypt",
    "decrypt_stream",
    "encrypt",
    "encrypt_stream",
    "open_message",
]

#: ``unwrap(sealed_data_key, context) -> plaintext data key`` (the client's unwrap, or the
#: data-key cache in front of it).
Unwrapper = Callable[[bytes, dict[str, str]], bytearray]
DATA_KEY_SIZE = 32  # AES-256
Progress = Callable[[int], None]


@dataclass(frozen=True)
class StreamSummary:
    """What an encrypt or decrypt stream did (for ``--json`` summaries and logs)."""

    key_id: str
    key_version: int
    bytes_in: int
    bytes_out: int
    frame_size: int

    def as_dict(self) -> dict[str, Any]:
        return {"key_id": self.key_id, "version": self.key_version,
                "bytes_in": self.bytes_in, "bytes_out": self.bytes_out,
                "frame_size": self.frame_size}


def encrypt_stream(src: BinaryIO, dst: BinaryIO, data_key: DataKey,
                   context: Mapping[str, str] | None, *, frame_size: int = DEFAULT_FRAME,
                   progress: Progress | None = None) -> StreamSummary:
    """Encrypt all of ``src`` into ``dst`` in constant memory (two frames)."""
    if len(data_key.plaintext) != DATA_KEY_SIZE:
        raise InvalidInput(f"an envelope data key is {DATA_KEY_SIZE} bytes")
    header, message_id, keys = write_header(frame_size, data_key.wrapped,
                                            encode_context(context), data_key.plaintext)
    dst.write(header)
    written = len(header)
    reader = _Counted(src, progress)
    for frame in encrypt_frames(reader, keys, message_id, frame_size):
        dst.write(frame)
        written += len(frame)
    return StreamSummary(data_key.key_id, data_key.version, reader.total, written,
                         frame_size)


class _Counted:
    """A reader that counts what passes (and reports progress), copying nothing."""

    __slots__ = ("progress", "src", "total")

    def __init__(self, src: BinaryIO, progress: Progress | None) -> None:
        self.src = src
        self.progress = progress
        self.total = 0

    def read(self, size: int = -1) -> bytes:
        data = self.src.read(size) or b""
        self.total += len(data)
        if data and self.progress is not None:
            self.progress(len(data))
        return data


def open_message(src: BinaryIO, unwrap: Unwrapper,
                 expected_context: Mapping[str, str] | None) -> tuple[Header, MessageKeys]:
    """Read the header, check the caller's context against it, unseal the data key (the
    HSM checks it is bound to that context), verify commitment and header tag."""
    header = read_header(src)
    if expected_context is not None:
        expected = encode_context(expected_context)
        if expected != header.context_bytes:
            raise ContextMismatch(_mismatch(dict(expected_context), header.context))
    data_key = unwrap(header.blob, header.context)
    try:
        if len(data_key) != DATA_KEY_SIZE:  # a sealed blob, but not an envelope data key
            raise InvalidCiphertext("not a valid hsm envelope message: the sealed key is not "
                                    "a data key", reason=Reason.MALFORMED)
        return header, check_header(header, data_key)
    finally:
        data_key[:] = bytes(len(data_key))


def _mismatch(expected: dict[str, str], actual: dict[str, str]) -> str:
    missing = sorted(set(actual) - set(expected))
    extra = sorted(set(expected) - set(actual))
    differ = sorted(k for k in set(actual) & set(expected) if actual[k] != expected[k])
    parts = []
    if missing:
        parts.append(f"the message also has {', '.join(map(repr, missing))}")
    if extra:
        parts.append(f"the message lacks {', '.join(map(repr, extra))}")
    if differ:
        parts.append(f"values differ for {', '.join(map(repr, differ))}")
    return ("encryption context does not match the message's: " + "; ".join(parts))


def decrypt_stream(src: BinaryIO, dst: BinaryIO, unwrap: Unwrapper,
                   expected_context: Mapping[str, str] | None = None, *,
                   progress: Progress | None = None) -> StreamSummary:
    """Decrypt ``src`` into ``dst``; every frame is verified before it is written.

    On an error part of the plaintext may already be in ``dst`` (each part authentic, the
    whole incomplete): callers writing files write to a temporary file and rename it on
    success (``hsm decrypt`` does).
    """
    header, keys = open_message(src, unwrap, expected_context)
    written = 0
    consumed = [header.size]

    def counted(n: int) -> None:
        consumed[0] += n
        if progress is not None:
            progress(n)

    for plaintext in decrypt_frames(src, keys, header, counted):
        dst.write(plaintext)
        written += len(plaintext)
    return StreamSummary(header.key_id, header.key_version, consumed[0], written,
                         header.frame_size)


def encrypt(plaintext: bytes | bytearray | memoryview, data_key: DataKey,
            context: Mapping[str, str] | None, *, frame_size: int = DEFAULT_FRAME) -> bytes:
    """One message in memory (no stream plumbing: small messages are the cache's case)."""
    if not isinstance(plaintext, bytes | bytearray | memoryview):
        raise InvalidInput(f"plaintext must be bytes, not {type(plaintext).__name__}")
    if len(data_key.plaintext) != DATA_KEY_SIZE:
        raise InvalidInput(f"an envelope data key is {DATA_KEY_SIZE} bytes")
    header, message_id, keys = write_header(frame_size, data_key.wrapped,
                                            encode_context(context), data_key.plaintext)
    frames = encrypt_frames(io.BytesIO(plaintext), keys, message_id, frame_size)
    return header + b"".join(frames)


def decrypt(message: bytes, unwrap: Unwrapper,
            expected_context: Mapping[str, str] | None = None) -> bytes:
    """One message in memory; nothing is returned unless all of it verifies."""
    if not isinstance(message, bytes | bytearray | memoryview):
        raise InvalidInput(f"message must be bytes, not {type(message).__name__}")
    src = io.BytesIO(message)
    header, keys = open_message(src, unwrap, expected_context)
    return b"".join(list(decrypt_frames(src, keys, header)))
