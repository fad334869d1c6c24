"""The master keys of one token, and the data-key calls applications make with them.

A :class:`Keyring` sits on one :class:`~hsm.pkcs11.pool.SessionPool`. Data keys are sealed
with AES-256-GCM performed inside the HSM under the master key, with the blob header and the
encoded encryption context as additional data (:mod:`hsm.keys.blob`). The master keys
themselves (finding, checking, caching, creating, destroying) are
:class:`~hsm.keys.catalog.MasterKeys`; the replication primitives (:meth:`Keyring.export_key`,
:meth:`Keyring.import_key`) are :mod:`hsm.keys.transfer`. This module keeps the data-key hot
paths, written out by hand: ``generate_data_key`` and ``unwrap`` lend a session and give it
back without a ``with``, in one ``try``, with one edge call for the HSM's work.

Replication: :meth:`Keyring.create_key` with ``replicable=True`` makes a key that may leave
the HSM only wrapped under the trusted cluster wrapping key (:mod:`hsm.keys.replication`);
:meth:`Keyring.export_key` wraps it there, :meth:`Keyring.import_key` unwraps it on another
member under the same label, and :meth:`Keyring.has_key` says whether (and with which KCV) a
member holds a key version.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from hsm.context import EMPTY as _EMPTY_CONTEXT
from hsm.context import encode_context
from hsm.errors import InvalidInput, MechanismUnsupported, OperationFailed, Reason
from hsm.keys import transfer
from hsm.keys.blob import ALG_AES256_GCM as _ALG
from hsm.keys.blob import DIRECT, IV_SIZE, MAX_PLAINTEXT, SEALED_KEY, BlobKind, parse_fields
from hsm.keys.blob import FORMAT_VERSION as _FORMAT
from hsm.keys.blob import MAGIC as _MAGIC
from hsm.keys.blob import pack_header as _header
from hsm.keys.catalog import MasterKeys
from hsm.keys.master import KeyInfo, allowed_mechanisms
from hsm.keys.replication import CLUSTER_WRAP_LABEL
from hsm.pkcs11 import Mechanisms, SessionPool, probe

__all__ = ["DataKey", "Keyring", "direct_plaintext"]

class DataKey:
    """A fresh data key: ``plaintext`` (a ``bytearray`` to wipe after use) and ``wrapped``.

    The repr never shows the plaintext. ``wipe()`` overwrites it with zeros.
    """

    __slots__ = ("key_id", "plaintext", "version", "wrapped")

    def __init__(self, key_id: str, version: int, plaintext: bytearray, wrapped: bytes) -> None:
        self.key_id = key_id
        self.version = version
        self.plaintext = plaintext
        self.wrapped = wrapped

    def wipe(self) -> None:
        self.plaintext[:] = bytes(len(self.plaintext))

    def __repr__(self) -> str:
        return (f"DataKey(key_id={self.key_id!r}, version={self.version}, "
                f"plaintext=<{len(self.plaintext)} bytes hidden>, "
                f"wrapped=<{len(self.wrapped)} bytes>)")


def _plaintext_bytes(plaintext: object) -> bytes:
    if not isinstance(plaintext, bytes | bytearray | memoryview):
        raise InvalidInput(f"key material must be bytes, not {type(plaintext).__name__}")
    data = bytes(plaintext)
    if not 1 <= len(data) <= MAX_PLAINTEXT:
        raise InvalidInput(f"key material must be 1 to {MAX_PLAINTEXT} bytes, got {len(data)}")
    return data


def direct_plaintext(plaintext: object) -> bytes:
    """``plaintext`` as bytes if direct encryption takes it (1 to 4096 bytes, AWS KMS
    Encrypt's bound), else :class:`InvalidInput` pointing larger data to envelope
    encryption."""
    if not isinstance(plaintext, bytes | bytearray | memoryview):
        raise InvalidInput(f"plaintext must be bytes, not {type(plaintext).__name__}")
    data = bytes(plaintext)
    limit = DIRECT.max_plaintext
    if len(data) > limit:
        raise InvalidInput(
            f"direct encryption takes at most {limit} bytes of plaintext, got {len(data)}; "
            "use envelope encryption for more: client.encrypt(...) or "
            "client.encrypt_stream(...), or 'hsm encrypt' without --direct")
    if not data:
        raise InvalidInput(f"direct encryption takes 1 to {limit} bytes of plaintext, got 0")
    return data


class Keyring:
    """Master keys and data-key operations on one token. Thread-safe."""

    def __init__(self, pool: SessionPool, *, allow_unsafe_keys: bool = False) -> None:
        self.pool = pool
        self._keys = MasterKeys(pool, allow_unsafe=allow_unsafe_keys)
        self._mechanisms: Mechanisms | None = None
        self._caller_iv = False
        # The catalog's own dicts, read on every data-key call without a lookup more.
        self._latest = self._keys.latest
        self._kids = self._keys.kids

    # -- life cycle ------------------------------------------------------------------------

    def open(self) -> Keyring:
        """Probe the module's mechanisms (the pool must be open; the keyring doesn't own it).
        Where the module enforces CKA_ALLOWED_MECHANISMS, master keys are made allowed
        AES-GCM alone and keys that are not are refused (:meth:`weak_keys` lists them)."""
        with self.pool.session() as lease:
            self._mechanisms = probe(lease.session)
        self._caller_iv = self._mechanisms.gcm_iv == "caller"
        self._keys.allowed = allowed_mechanisms(self._mechanisms)
        return self

    @property
    def mechanisms(self) -> Mechanisms:
        if self._mechanisms is None:
            raise OperationFailed("keyring is not open", reason=Reason.NOT_OPEN)
        return self._mechanisms

    @property
    def allow_unsafe_keys(self) -> bool:
        """Use master keys that break policy (with a warning) instead of refusing them."""
        return self._keys.allow_unsafe

    @allow_unsafe_keys.setter
    def allow_unsafe_keys(self, value: bool) -> None:
        self._keys.allow_unsafe = bool(value)

    def describe(self) -> dict[str, Any]:
        """The token, the module and what it offers, for ``hsm status``: ``token_label``,
        ``token_serial``, ``os_locking``, ``mechanisms`` (as probed) and ``keys`` (how many
        master key versions the token holds). Errors propagate (:class:`HSMError`)."""
        pool = self.pool
        return {
            "token_label": pool.token_label,
            "token_serial": pool.token_serial,
            "os_locking": pool.module.os_locking,
            "mechanisms": self.mechanisms.as_dict(),
            "keys": len(self.list_keys()),
        }

    # -- master keys -----------------------------------------------------------------------

    def create_key(self, *, key_id: str | None = None, version: int = 1,
                   replicable: bool = False) -> KeyInfo:
        """Generate a master key inside the HSM and check what it made.

        By default a new key id (a UUID) and version 1. The cluster passes ``key_id`` and
        ``version`` to make one key version on a member; a token that already holds that
        label is refused (:class:`OperationFailed`, reason ``key_exists``): one label, one
        object. ``replicable=True`` makes the key EXTRACTABLE and WRAP_WITH_TRUSTED: it can
        leave the HSM only wrapped under the trusted cluster wrapping key
        (:meth:`export_key`). Both are one-way: a key is replicable from birth or never.
        """
        return self._keys.create(key_id, version, replicable=replicable)

    def list_keys(self) -> list[KeyInfo]:
        """Every master key version on the token, read from the HSM itself."""
        return self._keys.list_keys()

    def key_info(self, key_id: str, version: int | None = None) -> KeyInfo:
        """Key version ``version`` of ``key_id`` (the latest if None) and its KCV."""
        return self._keys.info(key_id, version)

    def destroy_key(self, key_id: str, version: int) -> None:
        """Destroy one master key version. Irreversible: everything sealed under it is lost."""
        self._keys.destroy(key_id, version)

    def weak_keys(self) -> list[tuple[KeyInfo, list[str]]]:
        """Every master key version on the token whose attributes are weaker than the
        master-key template, each with the list of what is wrong, e.g. ``["MODIFIABLE",
        "UNWRAP", "WRAP", "no ALLOWED_MECHANISMS"]`` for a key made by an older version of
        hsm. Never raises :class:`~hsm.errors.UnsafeKey` for such keys (using them does,
        unless ``allow_unsafe_keys``); what ``verify`` reports. The KCV of a key none can be
        computed for is "". HSM trouble raises as usual (:class:`~hsm.errors.HSMError`)."""
        return self._keys.weak_keys()

    # -- replication -----------------------------------------------------------------------

    def has_key(self, key_id: str, version: int) -> KeyInfo | None:
        """The key version's :class:`KeyInfo` (with its KCV) if the token holds it, else None.

        A key under that label that breaks policy raises :class:`UnsafeKey` (it is not
        "missing": importing another copy beside it would make two objects under one label).
        """
        return self._keys.has(key_id, version)

    def export_key(self, key_id: str, version: int, *,
                   wrapping_key_label: str = CLUSTER_WRAP_LABEL) -> bytes:
        """The master key version wrapped (AES key wrap, RFC 3394) under the trusted cluster
        wrapping key, for :meth:`import_key` on another member. The key material never
        leaves the HSM in plaintext; the blob opens only inside an HSM holding that
        wrapping key.

        Refuses (:class:`OperationFailed`) a key that is not replicable (reason
        ``not_replicable``), a token without the cluster wrapping key (``no_wrapping_key``:
        run ``hsm cluster init``) or whose key under that label is not trusted
        (``wrapping_key_untrusted``).
        """
        return transfer.export_key(self._keys, self.mechanisms, key_id, version,
                                   wrapping_key_label=wrapping_key_label)

    def import_key(self, key_id: str, version: int, wrapped: bytes, *,
                   wrapping_key_label: str = CLUSTER_WRAP_LABEL,
                   expected_kcv: str | None = None) -> KeyInfo:
        """Unwrap a blob from :meth:`export_key` into this token as master key ``key_id``
        version ``version``: a replicable token object, checked against policy; returns its
        :class:`KeyInfo` (the cluster compares the KCV with the source's).

        Idempotent: if the token already holds that key version, nothing is imported and its
        :class:`KeyInfo` is returned. ``expected_kcv``, if given, must match (a fresh import
        that doesn't is destroyed: :class:`InvalidCiphertext`, reason ``kcv_mismatch``; an
        existing key is never touched: :class:`OperationFailed`, reason ``kcv_mismatch``).
        A tampered or truncated blob, or one made under another wrapping key, raises
        :class:`InvalidCiphertext` and leaves nothing behind.
        """
        return transfer.import_key(self._keys, self.mechanisms, key_id, version, wrapped,
                                   wrapping_key_label=wrapping_key_label,
                                   expected_kcv=expected_kcv)

    # -- data keys -------------------------------------------------------------------------

    def generate_data_key(self, key_id: str, context: Mapping[str, str] | None = None, *,
                          size: int = 32) -> DataKey:
        """``size`` random bytes from the HSM's RNG, returned in plaintext and sealed."""
        if size not in (16, 24, 32, 64):
            raise InvalidInput("data key size must be 16, 24, 32 or 64 bytes")
        kid = self._kids.get(key_id) if type(key_id) is str else None
        if kid is None:
            kid = self._keys.kid(key_id)
        ctx = _EMPTY_CONTEXT if context is None else encode_context(context)
        if not self._caller_iv:
            self._need_caller_iv()
        pool = self.pool
        lease, entered = pool.lend()  # this hot path lends and gives back without a `with`
        try:
            version = self._latest.get(kid) or self._keys.latest_version(lease, kid)
            key = lease.keys.get((kid, version))
            if key is None:
                key = self._keys.find(lease, kid, version)
            iv = os.urandom(IV_SIZE)
            header = _header(_MAGIC, _FORMAT, _ALG, kid, version, iv)
            fresh, sealed = key.encrypt_gcm_random(size, iv, header + ctx, "generate data key")
            plaintext = bytearray(fresh)
        except BaseException as exc:
            pool.give_back(lease, exc, entered)
            raise
        pool.give_back(lease, None, entered)
        return DataKey(key_id, version, plaintext, header + sealed)

    def wrap(self, key_id: str, plaintext: bytes | bytearray,
             context: Mapping[str, str] | None = None) -> bytes:
        """Seal a caller's key material under the current version of ``key_id``."""
        return self._seal(key_id, _plaintext_bytes(plaintext), context, SEALED_KEY, "seal")

    def unwrap(self, blob: bytes, context: Mapping[str, str] | None = None) -> bytearray:
        """Open a sealed blob; the blob names its key and version. ``InvalidCiphertext``
        if it was tampered with, sealed under another key, or bound to another context.

        The body is :meth:`_unseal`'s, written out: this is the hot path the data-key
        benchmark measures, and one call less per unwrap shows there."""
        kid, version, iv, ciphertext, header = parse_fields(blob)
        ctx = _EMPTY_CONTEXT if context is None else encode_context(context)
        pool = self.pool
        lease, entered = pool.lend()
        try:
            key = lease.keys.get((kid, version))
            if key is None:
                key = self._keys.find(lease, kid, version)
            plaintext = bytearray(key.decrypt_gcm(ciphertext, iv, header + ctx, "unwrap"))
        except BaseException as exc:
            pool.give_back(lease, exc, entered)
            raise
        pool.give_back(lease, None, entered)
        return plaintext

    def encrypt_direct(self, key_id: str, plaintext: bytes | bytearray | memoryview,
                       context: Mapping[str, str] | None = None) -> bytes:
        """Encrypt 1 to 4096 bytes under the current version of ``key_id`` inside the HSM
        (AWS KMS Encrypt semantics: no data key). The blob is a :data:`~hsm.keys.blob.DIRECT`
        blob: same layout and context binding as a sealed data key, another magic, so
        neither can be opened as the other. Larger input: :class:`InvalidInput`."""
        return self._seal(key_id, direct_plaintext(plaintext), context, DIRECT,
                          "encrypt direct")

    def decrypt_direct(self, blob: bytes, context: Mapping[str, str] | None = None) -> bytes:
        """Open a blob from :meth:`encrypt_direct` with the context it was made under;
        ``InvalidCiphertext`` if it was tampered with, made under another key or context,
        or is not a direct blob (a sealed data key, say)."""
        return self._unseal(blob, context, DIRECT, "decrypt direct")

    def _seal(self, key_id: str, data: bytes, context: Mapping[str, str] | None,
              kind: BlobKind, what: str) -> bytes:
        """AES-256-GCM of ``data`` inside the HSM under the current version of ``key_id``;
        the blob of ``kind``: header || ciphertext || tag, header and context as AAD."""
        kid = self._keys.kid(key_id)
        ctx = encode_context(context)
        self._need_caller_iv()
        with self.pool.session() as lease:
            version = self._latest.get(kid) or self._keys.latest_version(lease, kid)
            key = lease.keys.get((kid, version))
            if key is None:
                key = self._keys.find(lease, kid, version)
            iv = os.urandom(IV_SIZE)
            header = _header(kind.magic, _FORMAT, _ALG, kid, version, iv)
            return header + key.encrypt_gcm(data, iv, header + ctx, what)

    def _unseal(self, blob: bytes, context: Mapping[str, str] | None, kind: BlobKind,
                what: str) -> bytes:
        """The plaintext of a blob of ``kind``, decrypted and verified inside the HSM (the
        unwrap hot path: lends a session and gives it back without a ``with``)."""
        kid, version, iv, ciphertext, header = parse_fields(blob, kind)
        ctx = _EMPTY_CONTEXT if context is None else encode_context(context)
        pool = self.pool
        lease, entered = pool.lend()
        try:
            key = lease.keys.get((kid, version))
            if key is None:
                key = self._keys.find(lease, kid, version)
            plaintext = key.decrypt_gcm(ciphertext, iv, header + ctx, what)
        except BaseException as exc:
            pool.give_back(lease, exc, entered)
            raise
        pool.give_back(lease, None, entered)
        return plaintext

    def generate_random(self, size: int) -> bytes:
        """``size`` (1 to 1024) bytes from the HSM's random number generator."""
        if not 1 <= size <= 1024:
            raise InvalidInput("random byte count must be 1 to 1024")
        with self.pool.session() as lease:
            return lease.random(size)

    # -- internals -------------------------------------------------------------------------

    def _need_caller_iv(self) -> None:
        if not self._caller_iv:
            raise MechanismUnsupported(
                "this module does not accept caller-chosen AES-GCM IVs "
                f"(probed: {self.mechanisms.gcm_iv or 'no AES-GCM'}); sealing needs them"
            )

    def __repr__(self) -> str:
        return f"Keyring(token {self.pool.selector})"
