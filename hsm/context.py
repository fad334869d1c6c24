"""Encryption context: a non-secret ``str -> str`` map bound to ciphertext as AAD.

Encoding (injective, so ``{"a": "bc"}`` and ``{"ab": "c"}`` never collide)::

    count   uint16 big-endian               number of pairs
    then, for each pair sorted by the UTF-8 bytes of its key:
      klen  uint16 big-endian, key   UTF-8
      vlen  uint16 big-endian, value UTF-8

The empty context encodes as ``b"\\x00\\x00"``. Bounds: at most ``MAX_PAIRS`` pairs and
``MAX_ENCODED`` bytes in all, checked before anything is built.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping

from hsm.errors import InvalidContext

__all__ = [
    "EMPTY",
    "MAX_ENCODED",
    "MAX_PAIRS",
    "decode_context",
    "encode_context",
    "validate_context",
]

MAX_PAIRS = 64
MAX_ENCODED = 8192

_U16 = struct.Struct(">H")
_EMPTY = b"\x00\x00"
EMPTY = _EMPTY  # the encoding of no context
_CACHE_SIZE = 512
_cache: dict[tuple[tuple[str, str], ...], bytes] = {}


def validate_context(context: object) -> dict[str, str]:
    """Return ``context`` as a plain dict, or raise :class:`InvalidContext`."""
    if context is None:
        return {}
    if not isinstance(context, Mapping):
        raise InvalidContext(
            f"encryption context must be a mapping of str to str, not {type(context).__name__}"
        )
    if len(context) > MAX_PAIRS:
        raise InvalidContext(f"encryption context has {len(context)} pairs; at most {MAX_PAIRS}")
    out: dict[str, str] = {}
    for k, v in context.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise InvalidContext(
                "encryption context must map str to str; "
                f"found {type(k).__name__} -> {type(v).__name__}"
            )
        out[k] = v
    return out


def encode_context(context: Mapping[str, str] | None) -> bytes:
    """Encode a context injectively (see the module docstring).

    Runs on every call, so recent encodings are cached by the context's items (the
    context is not secret: it is additional data, stored in logs by design). Only
    contexts that passed validation are cached.
    """
    if not context:
        if context is None or isinstance(context, Mapping):
            return _EMPTY
        validate_context(context)  # raises: a falsy non-mapping
    try:
        items = tuple(context.items())
        cached = _cache.get(items)
    except (AttributeError, TypeError):  # not a mapping, or unhashable values
        items, cached = None, None
    if cached is not None:
        return cached
    pairs = validate_context(context)
    try:
        encoded = sorted((k.encode(), v.encode()) for k, v in pairs.items())
    except UnicodeEncodeError as exc:
        raise InvalidContext("encryption context holds a string that is not valid Unicode") from exc
    parts = [_U16.pack(len(encoded))]
    size = 2
    for k, v in encoded:
        size += 4 + len(k) + len(v)
        if size > MAX_ENCODED:
            raise InvalidContext(f"encryption context is larger than {MAX_ENCODED} bytes encoded")
        parts += (_U16.pack(len(k)), k, _U16.pack(len(v)), v)
    out = b"".join(parts)
    if items is not None and all(type(k) is str and type(v) is str for k, v in items):
        if len(_cache) >= _CACHE_SIZE:
            _cache.clear()
        _cache[items] = out
    return out


def decode_context(data: bytes) -> dict[str, str]:
    """Inverse of :func:`encode_context`; raises :class:`InvalidContext` on malformed input."""
    if len(data) > MAX_ENCODED:
        raise InvalidContext("encoded encryption context is too large")
    try:
        (count,) = _U16.unpack_from(data, 0)
        if count > MAX_PAIRS:
            raise InvalidContext(f"encoded encryption context has more than {MAX_PAIRS} pairs")
        pos = 2
        out: dict[str, str] = {}
        previous: bytes | None = None
        for _ in range(count):
            (klen,) = _U16.unpack_from(data, pos)
            k = data[pos + 2 : pos + 2 + klen]
            pos += 2 + klen
            (vlen,) = _U16.unpack_from(data, pos)
            v = data[pos + 2 : pos + 2 + vlen]
            pos += 2 + vlen
            if len(k) != klen or len(v) != vlen or (previous is not None and k <= previous):
                raise InvalidContext("malformed encoded encryption context")
            previous = k
            out[k.decode()] = v.decode()
    except (struct.error, UnicodeDecodeError) as exc:
        raise InvalidContext("malformed encoded encryption context") from exc
    if pos != len(data):
        raise InvalidContext("malformed encoded encryption context")
    return out
