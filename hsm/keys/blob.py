"""The sealed data-key blob: a data key sealed under a master key, self-describing.

Format version 1 (all integers big-endian; documented in ``docs/FORMAT.md``)::

    offset  size    field
    0       4       magic            b"HSMK" (sealed data key) or b"HSMD" (direct)
    4       1       format version   1
    5       1       algorithm        1 = AES-256-GCM inside the HSM, 96-bit IV, 128-bit tag
    6       16      key id           the master key's UUID, 16 raw bytes
    22      4       key version      uint32, >= 1
    26      12      IV
    38      n + 16  ciphertext || tag   n = 1 .. 1024 bytes of sealed key (direct: 4096)

The GCM additional data is the 38-byte header followed by the encoded encryption context
(:func:`hsm.context.encode_context`), so neither the key id, the version, the IV nor the
context can be changed without the tag failing. The context itself is not stored: the
caller must present it again to unseal.

Parsing checks the magic, version, algorithm and length before anything else; every
malformed blob gives :class:`~hsm.errors.InvalidCiphertext` with ``reason=Reason.MALFORMED``.

Two kinds of blob share this layout (:class:`BlobKind`), told apart by the magic:
:data:`SEALED_KEY` (``b"HSMK"``, 1 .. 1024 bytes of data key, what ``wrap`` and
``generate_data_key`` make) and :data:`DIRECT` (``b"HSMD"``, 1 .. 4096 bytes of caller data,
what ``encrypt_direct`` makes: KMS Encrypt semantics). The magic is in the header, and the
header is in the GCM additional data, so one kind can never be opened as the other: not by
the parser (wrong magic) and not by relabelling the header (the tag fails).
"""

from __future__ import annotations

import struct
import uuid
from typing import NamedTuple

from hsm.errors import InvalidCiphertext, Reason

__all__ = [
    "DIRECT",
    "DIRECT_MAX_PLAINTEXT",
    "HEADER_SIZE",
    "IV_SIZE",
    "MAGIC",
    "MAX_PLAINTEXT",
    "SEALED_KEY",
    "BlobKind",
    "SealedBlob",
    "header_for",
    "pack_header",
    "parse_blob",
    "parse_fields",
]

MAGIC = b"HSMK"
FORMAT_VERSION = 1
ALG_AES256_GCM = 1
IV_SIZE = 12  # the AES-GCM IV the keyring draws for every blob
TAG_SIZE = 16
MAX_PLAINTEXT = 1024

_HEADER = struct.Struct(">4sBB16sI12s")
HEADER_SIZE = _HEADER.size  # 38
pack_header = _HEADER.pack  # (kind magic, FORMAT_VERSION, ALG_AES256_GCM, key uuid, version, iv)
_unpack_header = _HEADER.unpack_from
MIN_SIZE = HEADER_SIZE + 1 + TAG_SIZE
MAX_SIZE = HEADER_SIZE + MAX_PLAINTEXT + TAG_SIZE
DIRECT_MAGIC = b"HSMD"
DIRECT_MAX_PLAINTEXT = 4096  # AWS KMS Encrypt's bound


class BlobKind(NamedTuple):
    """One kind of blob in the layout above: its magic, its names in error messages, and
    its bounds (plaintext bytes, and whole-blob bytes checked before anything is parsed)."""

    name: str  # "sealed blob has an impossible length"
    noun: str  # "not a sealed hsm data key"
    opener: str  # the call that opens it
    magic: bytes
    max_plaintext: int
    min_size: int
    max_size: int


#: A data key sealed under a master key (``wrap``, ``generate_data_key``, ``unwrap``).
SEALED_KEY = BlobKind("sealed blob", "a sealed hsm data key", "unwrap", MAGIC, MAX_PLAINTEXT,
                      MIN_SIZE, MAX_SIZE)
#: Caller data encrypted directly under a master key (``encrypt_direct``/``decrypt_direct``).
DIRECT = BlobKind("direct ciphertext", "an hsm direct ciphertext", "decrypt_direct",
                  DIRECT_MAGIC, DIRECT_MAX_PLAINTEXT, MIN_SIZE,
                  HEADER_SIZE + DIRECT_MAX_PLAINTEXT + TAG_SIZE)
_BY_MAGIC = {k.magic: k for k in (SEALED_KEY, DIRECT)}


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
    def header_for(key_uuid: bytes, version: int, iv: bytes,
                   kind: BlobKind = SEALED_KEY) -> bytes:
        return header_for(key_uuid, version, iv, kind)


def header_for(key_uuid: bytes, version: int, iv: bytes, kind: BlobKind = SEALED_KEY) -> bytes:
    """The 38-byte header of a blob of ``kind`` (:func:`pack_header` with the fixed fields
    filled in; hot paths call ``pack_header`` itself)."""
    return pack_header(kind.magic, FORMAT_VERSION, ALG_AES256_GCM, key_uuid, version, iv)


def parse_blob(data: bytes, kind: BlobKind = SEALED_KEY) -> SealedBlob:
    """Parse and bound-check a blob of ``kind`` (any bytes in, a blob or InvalidCiphertext
    out)."""
    return SealedBlob(*parse_fields(data, kind))


def parse_fields(data: bytes, kind: BlobKind = SEALED_KEY,
                 ) -> tuple[bytes, int, bytes, bytes, bytes]:
    """:func:`parse_blob` as a plain tuple ``(key uuid, version, iv, ciphertext, header)``:
    what every unwrap calls, without building a named tuple."""
    if type(data) is not bytes:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise InvalidCiphertext(f"{kind.name} must be bytes", reason=Reason.MALFORMED)
        data = bytes(data)
    if not kind.min_size <= len(data) <= kind.max_size:
        if data[:4] in _BY_MAGIC and data[:4] != kind.magic:
            raise _wrong_kind(data[:4], kind)  # say what it is rather than "impossible length"
        raise InvalidCiphertext(f"{kind.name} has an impossible length", reason=Reason.MALFORMED)
    magic, fmt, alg, key_uuid, version, iv = _unpack_header(data)
    if magic != kind.magic:
        raise _wrong_kind(magic, kind)
    if fmt != FORMAT_VERSION:
        raise InvalidCiphertext(f"unknown {kind.name} format {fmt}", reason=Reason.MALFORMED)
    if alg != ALG_AES256_GCM or version < 1:
        raise InvalidCiphertext(f"{kind.name} header is invalid", reason=Reason.MALFORMED)
    return key_uuid, version, iv, data[HEADER_SIZE:], data[:HEADER_SIZE]


def _wrong_kind(magic: bytes, kind: BlobKind) -> InvalidCiphertext:
    other = _BY_MAGIC.get(magic)
    if other is None:
        return InvalidCiphertext(f"not {kind.noun}", reason=Reason.MALFORMED)
    return InvalidCiphertext(f"not {kind.noun}: this is {other.noun} (opened by "
                             f"{other.opener}, not {kind.opener})", reason=Reason.MALFORMED)
