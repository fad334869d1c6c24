"""The sealed data-key blob: a data key sealed under a master key, self-describing.

Format version 1 (all integers big-endian; documented in ``docs/FORMAT.md``)::

    offset  size    field
    0       4       magic            b"HSMK"
    4       1       format version   1
    5       1       algorithm        1 = AES-256-GCM inside the HSM, 96-bit IV, 128-bit tag
    6       16      key id           the master key's UUID, 16 raw bytes
    22      4       key version      uint32, >= 1
    26      12      IV
    38      n + 16  ciphertext || tag   n = 1 .. MAX_PLAINTEXT bytes of sealed key

The GCM additional data is the 38-byte header followed by the encoded encryption context
(:func:`hsm.context.encode_context`), so neither the key id, the version, the IV nor the
context can be changed without the tag failing. The context itself is not stored: the
caller must present it again to unseal.

Parsing checks the magic, version, algorithm and length before anything else; every
malformed blob gives :class:`~hsm.errors.InvalidCiphertext` with ``reason="malformed"``.
"""

from __future__ import annotations

import struct
import uuid
from typing import NamedTuple

from hsm.errors import InvalidCiphertext

__all__ = [
    "HEADER_SIZE",
    "MAGIC",
    "MAX_PLAINTEXT",
    "SealedBlob",
    "pack_header",
    "parse_blob",
    "parse_fields",
]

MAGIC = b"HSMK"
FORMAT_VERSION = 1
ALG_AES256_GCM = 1
IV_SIZE = 12
TAG_SIZE = 16
MAX_PLAINTEXT = 1024

_HEADER = struct.Struct(">4sBB16sI12s")
HEADER_SIZE = _HEADER.size  # 38
pack_header = _HEADER.pack  # (MAGIC, FORMAT_VERSION, ALG_AES256_GCM, key uuid, version, iv)
_unpack_header = _HEADER.unpack_from
MIN_SIZE = HEADER_SIZE + 1 + TAG_SIZE
MAX_SIZE = HEADER_SIZE + MAX_PLAINTEXT + TAG_SIZE


class SealedBlob(NamedTuple):
    """A parsed blob. ``header`` is the exact 38 bytes authenticated as AAD.

    A named tuple (not a dataclass): it is built on every unwrap.
    """

    key_uuid: bytes
    version: int
    iv: bytes
    ciphertext: bytes  # ciphertext || tag
    header: bytes

    @property
    def key_id(self) -> str:
        return str(uuid.UUID(bytes=self.key_uuid))

    @staticmethod
    def header_for(key_uuid: bytes, version: int, iv: bytes) -> bytes:
        return pack_header(MAGIC, FORMAT_VERSION, ALG_AES256_GCM, key_uuid, version, iv)


def parse_blob(data: bytes) -> SealedBlob:
    """Parse and bound-check a sealed blob (any bytes in, a blob or InvalidCiphertext out)."""
    return SealedBlob(*parse_fields(data))


def parse_fields(data: bytes) -> tuple[bytes, int, bytes, bytes, bytes]:
    """:func:`parse_blob` as a plain tuple ``(key uuid, version, iv, ciphertext, header)``:
    what every unwrap calls, without building a named tuple."""
    if type(data) is not bytes:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise InvalidCiphertext("sealed blob must be bytes", reason="malformed")
        data = bytes(data)
    if not MIN_SIZE <= len(data) <= MAX_SIZE:
        raise InvalidCiphertext("sealed blob has an impossible length", reason="malformed")
    magic, fmt, alg, key_uuid, version, iv = _unpack_header(data)
    if magic != MAGIC:
        raise InvalidCiphertext("not a sealed hsm data key", reason="malformed")
    if fmt != FORMAT_VERSION:
        raise InvalidCiphertext(f"unknown sealed blob format {fmt}", reason="malformed")
    if alg != ALG_AES256_GCM or version < 1:
        raise InvalidCiphertext("sealed blob header is invalid", reason="malformed")
    return key_uuid, version, iv, data[HEADER_SIZE:], data[:HEADER_SIZE]
