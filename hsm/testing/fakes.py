"""In-memory cluster members for testing cluster logic (routing, failover, quorum, resync)
without an HSM. Real cryptography, same blob format, programmable faults.

A :class:`FakeMember` follows the same seam as a real member: it opens, closes, answers a
ping and hands out its keyring, a :class:`FakeKeyring` with the real keyring's methods::

    a, b = FakeMember("a"), FakeMember("b")
    cluster = Cluster([a, b], quorum=2, monitor=False, clock=fake_clock)
    cluster.open()
    key = cluster.create_key()
    cluster.call(Operation.GENERATE_DATA_KEY, lambda ring: ring.generate_data_key(key.key_id))
    a.fail()                 # every call raises HSMUnavailable(device_error) until heal()
    b.fail_next(2)           # the next two calls fail
    a.hang()                 # calls block until heal()
    a.corrupt = True         # unwrap (and decrypt_direct) says "does not verify" to everything

Keys live in a dict: this is a fake, never a place for real key material.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections import Counter
from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

from hsm.context import encode_context
from hsm.errors import (
    HSMError,
    HSMUnavailable,
    InvalidCiphertext,
    InvalidInput,
    KeyNotFound,
    OperationFailed,
    Reason,
)
from hsm.keys import DataKey, KeyInfo
from hsm.keys.blob import DIRECT, SEALED_KEY, BlobKind, SealedBlob, parse_blob
from hsm.keys.keyring import direct_plaintext

__all__ = ["FakeKeyring", "FakeMember"]

# Stands for the trusted cluster wrapping key that `hsm cluster init` puts on every member.
_CLUSTER_KEY = bytes(range(32))


def _kcv(material: bytes) -> str:
    enc = Cipher(algorithms.AES(material), modes.ECB()).encryptor()  # noqa: S305 - KCV only
    return (enc.update(bytes(16)) + enc.finalize())[:3].hex()


class FakeMember:
    """A member in memory, with faults switched on and off by the test. Its keys and the
    count of calls by operation (``calls["unwrap"]``) are there to look at."""

    def __init__(self, name: str, *, cluster_key: bytes = _CLUSTER_KEY) -> None:
        self.name = name
        self.cluster_key = cluster_key  # another value: a member with another wrapping key
        self.keys: dict[tuple[str, int], bytes] = {}
        self.calls: Counter[str] = Counter()
        self.corrupt = False
        self.weak: set[tuple[str, int]] = set()  # key versions weak_keys() reports
        self.opened = False
        self._error: HSMError | None = None
        self._fail_next = 0
        self._next_error: HSMError | None = None
        self._hang = threading.Event()
        self._hang.set()
        self._lock = threading.Lock()
        self._keyring = FakeKeyring(self)

    # -- faults ----------------------------------------------------------------------------

    def fail(self, error: HSMError | None = None) -> None:
        self._error = error or HSMUnavailable(f"{self.name}: device error",
                                              reason=Reason.DEVICE_ERROR)

    def fail_next(self, count: int = 1, error: HSMError | None = None) -> None:
        self._fail_next = count
        self._next_error = error

    def hang(self) -> None:
        self._hang.clear()

    def heal(self) -> None:
        self._error = None
        self._fail_next = 0
        self.corrupt = False
        self._hang.set()

    @property
    def faulty(self) -> bool:
        return self._error is not None or self._fail_next > 0 or not self._hang.is_set() \
            or self.corrupt

    def _enter(self, op: str) -> None:
        with self._lock:
            self.calls[op] += 1
            if self._fail_next > 0:
                self._fail_next -= 1
                raise self._next_error or HSMUnavailable(f"{self.name}: function failed",
                                                         reason=Reason.FUNCTION_FAILED)
        self._hang.wait()
        if self._error is not None:
            raise self._error

    # -- the member seam ------------------------------------------------------------------

    @property
    def keyring(self) -> FakeKeyring:
        if not self.opened:
            raise HSMUnavailable(f"member {self.name} is not connected", reason=Reason.NOT_OPEN)
        return self._keyring

    def open(self) -> None:
        self._enter("open")
        self.opened = True

    def close(self) -> None:
        self.opened = False

    def ping(self) -> None:
        """Like a real member's: opens if needed, then a call that needs the token."""
        if not self.opened:
            self.open()
        self._enter("ping")

    def __repr__(self) -> str:
        return f"<FakeMember {self.name} keys={len(self.keys)}{' faulty' if self.faulty else ''}>"


class FakeKeyring:
    """The keyring of a :class:`FakeMember`: the real keyring's operations, in memory, each
    going through the member's faults first."""

    def __init__(self, member: FakeMember) -> None:
        self.member = member
        self.name = member.name

    @property
    def keys(self) -> dict[tuple[str, int], bytes]:
        return self.member.keys

    def _enter(self, op: str) -> None:
        self.member._enter(op)

    def _material(self, key_id: str, version: int) -> bytes:
        try:
            return self.keys[(key_id, version)]
        except KeyError:
            raise KeyNotFound(f"no master key {key_id} version {version} on {self.name}",
                              reason=Reason.KEY_NOT_FOUND) from None

    def _latest(self, key_id: str) -> int:
        versions = [v for k, v in self.keys if k == key_id]
        if not versions:
            raise KeyNotFound(f"no master key {key_id} on {self.name}", reason=Reason.KEY_NOT_FOUND)
        return max(versions)

    def _seal(self, key_id: str, plaintext: bytes, context: Mapping[str, str] | None,
              kind: BlobKind = SEALED_KEY) -> bytes:
        ctx = encode_context(context)
        version = self._latest(key_id)
        iv = os.urandom(12)
        header = SealedBlob.header_for(uuid.UUID(key_id).bytes, version, iv, kind)
        sealed = AESGCM(self._material(key_id, version)).encrypt(iv, plaintext, header + ctx)
        return header + sealed

    def generate_data_key(self, key_id: str, context: Mapping[str, str] | None = None, *,
                          size: int = 32) -> DataKey:
        self._enter("generate_data_key")
        plaintext = bytearray(os.urandom(size))
        blob = self._seal(key_id, bytes(plaintext), context)
        return DataKey(key_id, parse_blob(blob).version, plaintext, blob)

    def wrap(self, key_id: str, plaintext: bytes | bytearray,
             context: Mapping[str, str] | None = None) -> bytes:
        self._enter("wrap")
        if not plaintext:
            raise InvalidInput("key material must not be empty")
        return self._seal(key_id, bytes(plaintext), context)

    def unwrap(self, blob: bytes, context: Mapping[str, str] | None = None) -> bytearray:
        return bytearray(self._open(blob, context, SEALED_KEY, "unwrap"))

    def encrypt_direct(self, key_id: str, plaintext: bytes | bytearray | memoryview,
                       context: Mapping[str, str] | None = None) -> bytes:
        self._enter("encrypt_direct")
        return self._seal(key_id, direct_plaintext(plaintext), context, DIRECT)

    def decrypt_direct(self, blob: bytes, context: Mapping[str, str] | None = None) -> bytes:
        return self._open(blob, context, DIRECT, "decrypt_direct")

    def _open(self, blob: bytes, context: Mapping[str, str] | None, kind: BlobKind,
              op: str) -> bytes:
        # As in the real keyring, the blob and the context are checked before the HSM (here:
        # the member's faults and its call count) is asked anything.
        sealed = parse_blob(blob, kind)
        ctx = encode_context(context)
        self._enter(op)
        material = self._material(sealed.key_id, sealed.version)
        if self.member.corrupt:
            raise InvalidCiphertext("ciphertext does not verify", reason=Reason.GENERAL_ERROR)
        try:
            return AESGCM(material).decrypt(sealed.iv, sealed.ciphertext, sealed.header + ctx)
        except Exception:  # cryptography's InvalidTag
            raise InvalidCiphertext("ciphertext does not verify", reason=Reason.TAG) from None

    def generate_random(self, size: int) -> bytes:
        self._enter("generate_random")
        return os.urandom(size)

    def create_key(self, *, key_id: str | None = None, version: int = 1,
                   replicable: bool = False) -> KeyInfo:
        self._enter("create_key")
        key_id = str(uuid.uuid4()) if key_id is None else key_id
        material = os.urandom(32)
        self.keys[(key_id, version)] = material
        return KeyInfo(key_id, version, _kcv(material))

    def destroy_key(self, key_id: str, version: int) -> None:
        self._enter("destroy_key")
        if self.keys.pop((key_id, version), None) is None:
            raise KeyNotFound(f"no master key {key_id} version {version}",
                              reason=Reason.KEY_NOT_FOUND)

    def list_keys(self) -> list[KeyInfo]:
        self._enter("list_keys")
        return [KeyInfo(k, v, _kcv(m)) for (k, v), m in sorted(self.keys.items())]

    def key_info(self, key_id: str, version: int | None = None) -> KeyInfo:
        self._enter("key_info")
        version = version or self._latest(key_id)
        return KeyInfo(key_id, version, _kcv(self._material(key_id, version)))

    def export_key(self, key_id: str, version: int) -> bytes:
        self._enter("export_key")
        return aes_key_wrap(self.member.cluster_key, self._material(key_id, version))

    def import_key(self, key_id: str, version: int, wrapped: bytes, *,
                   expected_kcv: str | None = None) -> KeyInfo:
        """Like the real one: idempotent; a copy whose KCV isn't ``expected_kcv`` is refused
        (a fresh one is not kept, an existing one is left alone)."""
        self._enter("import_key")
        existing = self.keys.get((key_id, version))
        if existing is None:
            try:
                material = aes_key_unwrap(self.member.cluster_key, wrapped)
            except InvalidUnwrap:
                raise InvalidCiphertext("wrapped key does not verify",
                                        reason=Reason.WRAPPED_KEY_INVALID) from None
            if expected_kcv is not None and _kcv(material) != expected_kcv:
                raise InvalidCiphertext("imported key has another KCV", reason=Reason.KCV_MISMATCH)
            self.keys[(key_id, version)] = material
        elif expected_kcv is not None and _kcv(existing) != expected_kcv:
            raise OperationFailed("a different key is already there", reason=Reason.KCV_MISMATCH)
        return KeyInfo(key_id, version, _kcv(self.keys[(key_id, version)]))

    def weak_keys(self) -> list[tuple[KeyInfo, list[str]]]:
        """Fake keys have no attributes to be weak in, except those a test names."""
        self._enter("weak_keys")
        return [(KeyInfo(k, v, _kcv(self.keys[(k, v)])), ["WEAK (set by the test)"])
                for k, v in sorted(self.member.weak) if (k, v) in self.keys]

    def describe(self) -> dict[str, Any]:
        self._enter("describe")
        return {"module": "fake", "token_label": self.name, "token_serial": self.name,
                "os_locking": True, "mechanisms": {}, "keys": len(self.keys)}
