"""The master keys of one token, and the data-key calls applications make with them.

A :class:`Keyring` sits on one :class:`~hsm.pkcs11.pool.SessionPool`. Data keys are sealed
with AES-256-GCM performed inside the HSM under the master key, with the blob header and the
encoded encryption context as additional data (:mod:`hsm.keys.blob`). Key objects are found
once per worker session and kept with it (they die with the session's module generation);
attribute checks are done once per key per generation.

Replication (the cluster layer's per-HSM primitives): :meth:`Keyring.create_key` with
``replicable=True`` makes a key that may leave the HSM only wrapped under the trusted cluster
wrapping key (:mod:`hsm.keys.replication`); :meth:`Keyring.export_key` wraps it there,
:meth:`Keyring.import_key` unwraps it on another member under the same label, and
:meth:`Keyring.has_key` says whether (and with which KCV) a member holds a key version.
"""

from __future__ import annotations

import logging
import os
import uuid
from typing import Any

import pkcs11
import pkcs11.exceptions as p11e
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass

from hsm.context import EMPTY as _EMPTY_CONTEXT
from hsm.context import encode_context
from hsm.errors import (
    HSMError,
    InvalidCiphertext,
    InvalidInput,
    KeyNotFound,
    MechanismUnsupported,
    OperationFailed,
    Reason,
    UnsafeKey,
)
from hsm.keys.blob import ALG_AES256_GCM as _ALG
from hsm.keys.blob import DIRECT, MAX_PLAINTEXT, SEALED_KEY, BlobKind, parse_fields
from hsm.keys.blob import FORMAT_VERSION as _FORMAT
from hsm.keys.blob import MAGIC as _MAGIC
from hsm.keys.blob import pack_header as _header
from hsm.keys.master import (
    CAPABILITIES,
    POLICY_ATTRIBUTES,
    TRUST_ATTRIBUTE,
    KeyInfo,
    check_attributes,
    check_version,
    create_template,
    key_id_bytes,
    label_for,
    parse_label,
)
from hsm.keys.replication import CLUSTER_WRAP_LABEL, find_wrapping_key, no_wrapping_key
from hsm.pkcs11 import Lease, Mechanisms, SessionPool, probe, translate_error, translated

__all__ = ["DataKey", "Keyring", "direct_plaintext"]

log = logging.getLogger(__name__)

_GCM = Mechanism.AES_GCM
_GCMParams = pkcs11.GCMParams
_SECRET = ObjectClass.SECRET_KEY
_POLICY_READ = [*POLICY_ATTRIBUTES, TRUST_ATTRIBUTE]
_EXPORT_LEN = 40  # an AES-256 key under AES key wrap (RFC 3394): 32 + 8 bytes


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
        self.allow_unsafe_keys = allow_unsafe_keys
        self._mechanisms: Mechanisms | None = None
        self._caller_iv = False
        self._verified: set[tuple[bytes, int, int]] = set()  # (uuid, version, generation)
        self._latest: dict[bytes, int] = {}
        self._kids: dict[str, bytes] = {}  # key id text -> UUID bytes, parsed once

    # -- life cycle ------------------------------------------------------------------------

    def open(self) -> Keyring:
        """Probe the module's mechanisms (the pool must be open; the keyring doesn't own it)."""
        with self.pool.session() as lease, translated("probe mechanisms"):
            self._mechanisms = probe(lease.session)
        self._caller_iv = self._mechanisms.gcm_iv == "caller"
        return self

    @property
    def mechanisms(self) -> Mechanisms:
        if self._mechanisms is None:
            raise OperationFailed("keyring is not open", reason=Reason.NOT_OPEN)
        return self._mechanisms

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
        fresh = key_id is None
        key_id = str(uuid.uuid4()) if key_id is None else _canonical(key_id)
        version = check_version(version)
        label, cka_id, template = create_template(key_id, version, replicable=replicable)
        with self.pool.session() as lease:
            if not fresh and self._find_label(lease, label):
                raise OperationFailed(f"token {self.pool.selector} already holds master key "
                                      f"{key_id} version {version}", reason=Reason.KEY_EXISTS)
            with translated("create key"):
                obj = lease.session.generate_key(
                    KeyType.AES, 256, label=label, id=cka_id, store=True,
                    capabilities=CAPABILITIES, mechanism=Mechanism.AES_KEY_GEN,
                    template=template,
                )
            try:
                self._check(obj, label, allow_unsafe=False)
                with translated("key check value"):
                    kcv = self._kcv(obj)
            except BaseException:
                # The module ignored our template: this key must never be used.
                with translated("destroy unsafe key"):
                    obj.destroy()
                raise
        self._note_version(key_id, version, fresh=fresh)
        log.info("created master key %s version %d (kcv %s%s)", key_id, version, kcv,
                 ", replicable" if replicable else "")
        return KeyInfo(key_id, version, kcv)

    def list_keys(self) -> list[KeyInfo]:
        """Every master key version on the token, read from the HSM itself."""
        found: list[KeyInfo] = []
        with self.pool.session() as lease, translated("list keys"):
            objects = list(lease.session.get_objects({Attribute.CLASS: _SECRET}))
            for obj in objects:
                parsed = parse_label(obj.label)
                if parsed is not None:
                    found.append(KeyInfo(parsed[0], parsed[1], self._kcv(obj)))
        found.sort(key=lambda k: (k.key_id, k.version))
        for info in found:
            kid = key_id_bytes(info.key_id)
            self._latest[kid] = max(self._latest.get(kid, 0), info.version)
        return found

    def key_info(self, key_id: str, version: int | None = None) -> KeyInfo:
        kid = key_id_bytes(key_id)
        with self.pool.session() as lease:
            version = version or self._latest_version(lease, kid)
            obj = self._key(lease, kid, version)
            with translated("key check value"):
                return KeyInfo(key_id, version, self._kcv(obj))

    def destroy_key(self, key_id: str, version: int) -> None:
        """Destroy one master key version. Irreversible: everything sealed under it is lost."""
        kid = key_id_bytes(key_id)
        with self.pool.session() as lease:
            obj = self._key(lease, kid, version)
            with translated("destroy key"):
                obj.destroy()
            lease.keys.pop((kid, version), None)
        self.pool.drop_keys()
        self._latest.pop(kid, None)
        log.info("destroyed master key %s version %d", key_id, version)

    # -- replication -----------------------------------------------------------------------

    def has_key(self, key_id: str, version: int) -> KeyInfo | None:
        """The key version's :class:`KeyInfo` (with its KCV) if the token holds it, else None.

        A key under that label that breaks policy raises :class:`UnsafeKey` (it is not
        "missing": importing another copy beside it would make two objects under one label).
        """
        kid = key_id_bytes(key_id)
        version = check_version(version)
        with self.pool.session() as lease:
            try:
                obj = self._key(lease, kid, version)
            except KeyNotFound:
                return None
            with translated("key check value"):
                return KeyInfo(str(uuid.UUID(bytes=kid)), version, self._kcv(obj))

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
        from hsm.keys.keywrap import WrapMechanism, wrap_key_object  # keywrap imports us

        kid = key_id_bytes(key_id)
        version = check_version(version)
        with self.pool.session() as lease:
            key = self._key(lease, kid, version)
            with translated("read key attributes"):
                attrs = _policy_attributes(key)
            if not (attrs.get(Attribute.EXTRACTABLE) is True
                    and attrs.get(TRUST_ATTRIBUTE) is True):
                raise OperationFailed(
                    f"master key {uuid.UUID(bytes=kid)} version {version} is not replicable "
                    "(it was created non-extractable): it can never leave the HSM, not even "
                    "wrapped", reason=Reason.NOT_REPLICABLE,
                )
            wrapper = find_wrapping_key(lease.session, wrapping_key_label)
            if wrapper is None:
                self.pool.check_token(lease)
                raise no_wrapping_key(wrapping_key_label, self.pool.selector)
            blob = wrap_key_object(lease.session, wrapper, key, WrapMechanism.KW,
                                   self.mechanisms)
        log.info("exported master key %s version %d under %r", uuid.UUID(bytes=kid), version,
                 wrapping_key_label)
        return blob

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
        from hsm.keys.keywrap import WrapMechanism, pkcs11_mechanism  # keywrap imports us

        key_id = _canonical(key_id)
        kid = key_id_bytes(key_id)
        version = check_version(version)
        if not isinstance(wrapped, bytes | bytearray | memoryview):
            raise InvalidInput(f"wrapped key must be bytes, not {type(wrapped).__name__}")
        data = bytes(wrapped)
        if len(data) != _EXPORT_LEN:
            raise InvalidCiphertext("ciphertext does not verify", reason=Reason.WRAPPED_KEY_LENGTH)
        want = expected_kcv.lower() if expected_kcv is not None else None
        mechanism = pkcs11_mechanism(WrapMechanism.KW, self.mechanisms, length=32)
        label, cka_id, template = create_template(key_id, version, replicable=True)
        with self.pool.session() as lease:
            if self._find_label(lease, label):
                obj = self._key(lease, kid, version)
                with translated("key check value"):
                    info = KeyInfo(key_id, version, self._kcv(obj))
                if want is not None and info.kcv != want:
                    raise OperationFailed(
                        f"token {self.pool.selector} already holds master key {key_id} version "
                        f"{version} with kcv {info.kcv}, not {want}; it is left as it is",
                        reason=Reason.KCV_MISMATCH,
                    )
                return info
            wrapper = find_wrapping_key(lease.session, wrapping_key_label)
            if wrapper is None:
                self.pool.check_token(lease)
                raise no_wrapping_key(wrapping_key_label, self.pool.selector)
            with translated("import key", integrity=True):
                obj = wrapper.unwrap_key(
                    _SECRET, KeyType.AES, data, id=cka_id, label=label,
                    mechanism=Mechanism(mechanism), store=True, capabilities=CAPABILITIES,
                    template=template,
                )
            try:
                # A 40-byte RFC 3394 blob holds exactly 32 bytes: the length is proven even
                # where the module records none (SoftHSM: VALUE_LEN 0, empty CHECK_VALUE).
                self._check(obj, label, allow_unsafe=False)
                with translated("key check value"):
                    kcv = self._kcv(obj)
                if want is not None and kcv != want:
                    raise InvalidCiphertext("ciphertext does not verify",
                                            reason=Reason.KCV_MISMATCH)
            except BaseException:
                _destroy_quietly(obj, label)
                raise
        self._note_version(key_id, version, fresh=False)
        log.info("imported master key %s version %d (kcv %s) under %r", key_id, version, kcv,
                 wrapping_key_label)
        return KeyInfo(key_id, version, kcv)

    # -- data keys -------------------------------------------------------------------------

    def generate_data_key(self, key_id: str, context: Any = None, *, size: int = 32) -> DataKey:
        """``size`` random bytes from the HSM's RNG, returned in plaintext and sealed."""
        if size not in (16, 24, 32, 64):
            raise InvalidInput("data key size must be 16, 24, 32 or 64 bytes")
        kid = self._kids.get(key_id) if type(key_id) is str else None
        if kid is None:
            kid = self._kid(key_id)
        ctx = _EMPTY_CONTEXT if context is None else encode_context(context)
        if not self._caller_iv:
            self._need_caller_iv()
        pool = self.pool
        lease, entered = pool.lend()  # this hot path lends and gives back without a `with`
        try:
            version = self._latest.get(kid) or self._latest_version(lease, kid)
            key = lease.keys.get((kid, version))
            if key is None:
                key = self._key(lease, kid, version)
            iv = os.urandom(12)
            header = _header(_MAGIC, _FORMAT, _ALG, kid, version, iv)
            try:
                fresh = lease.session.generate_random(size * 8)
                sealed = key.encrypt(fresh, mechanism=_GCM,
                                     mechanism_param=_GCMParams(iv, header + ctx, 128))
                plaintext = bytearray(fresh)
            except p11e.PKCS11Error as exc:
                raise translate_error(exc, "generate data key") from exc
        except BaseException as exc:
            pool.give_back(lease, exc, entered)
            raise
        pool.give_back(lease, None, entered)
        return DataKey(key_id, version, plaintext, header + sealed)

    def wrap(self, key_id: str, plaintext: bytes | bytearray, context: Any = None) -> bytes:
        """Seal a caller's key material under the current version of ``key_id``."""
        return self._seal(key_id, _plaintext_bytes(plaintext), context, SEALED_KEY, "seal")

    def unwrap(self, blob: bytes, context: Any = None) -> bytearray:
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
                key = self._key(lease, kid, version)
            try:
                plaintext = bytearray(key.decrypt(
                    ciphertext, mechanism=_GCM,
                    mechanism_param=_GCMParams(iv, header + ctx, 128)))
            except p11e.PKCS11Error as exc:
                raise translate_error(exc, "unwrap", integrity=True) from exc
        except BaseException as exc:
            pool.give_back(lease, exc, entered)
            raise
        pool.give_back(lease, None, entered)
        return plaintext

    def encrypt_direct(self, key_id: str, plaintext: bytes | bytearray | memoryview,
                       context: Any = None) -> bytes:
        """Encrypt 1 to 4096 bytes under the current version of ``key_id`` inside the HSM
        (AWS KMS Encrypt semantics: no data key). The blob is a :data:`~hsm.keys.blob.DIRECT`
        blob: same layout and context binding as a sealed data key, another magic, so
        neither can be opened as the other. Larger input: :class:`InvalidInput`."""
        return self._seal(key_id, direct_plaintext(plaintext), context, DIRECT,
                          "encrypt direct")

    def decrypt_direct(self, blob: bytes, context: Any = None) -> bytes:
        """Open a blob from :meth:`encrypt_direct` with the context it was made under;
        ``InvalidCiphertext`` if it was tampered with, made under another key or context,
        or is not a direct blob (a sealed data key, say)."""
        return self._unseal(blob, context, DIRECT, "decrypt direct")

    def _seal(self, key_id: str, data: bytes, context: Any, kind: BlobKind, what: str,
              ) -> bytes:
        """AES-256-GCM of ``data`` inside the HSM under the current version of ``key_id``;
        the blob of ``kind``: header || ciphertext || tag, header and context as AAD."""
        kid = self._kid(key_id)
        ctx = encode_context(context)
        self._need_caller_iv()
        with self.pool.session() as lease:
            version = self._latest.get(kid) or self._latest_version(lease, kid)
            key = lease.keys.get((kid, version))
            if key is None:
                key = self._key(lease, kid, version)
            iv = os.urandom(12)
            header = _header(kind.magic, _FORMAT, _ALG, kid, version, iv)
            with translated(what):
                sealed: bytes = key.encrypt(data, mechanism=_GCM,
                                            mechanism_param=_GCMParams(iv, header + ctx, 128))
            return header + sealed

    def _unseal(self, blob: bytes, context: Any, kind: BlobKind, what: str) -> bytes:
        """The plaintext of a blob of ``kind``, decrypted and verified inside the HSM (the
        unwrap hot path: lends a session and gives it back without a ``with``)."""
        kid, version, iv, ciphertext, header = parse_fields(blob, kind)
        ctx = _EMPTY_CONTEXT if context is None else encode_context(context)
        pool = self.pool
        lease, entered = pool.lend()
        try:
            key = lease.keys.get((kid, version))
            if key is None:
                key = self._key(lease, kid, version)
            try:
                plaintext: bytes = key.decrypt(
                    ciphertext, mechanism=_GCM,
                    mechanism_param=_GCMParams(iv, header + ctx, 128))
            except p11e.PKCS11Error as exc:
                raise translate_error(exc, what, integrity=True) from exc
        except BaseException as exc:
            pool.give_back(lease, exc, entered)
            raise
        pool.give_back(lease, None, entered)
        return plaintext

    def generate_random(self, size: int) -> bytes:
        if not 1 <= size <= 1024:
            raise InvalidInput("random byte count must be 1 to 1024")
        with self.pool.session() as lease, translated("generate random"):
            return bytes(lease.session.generate_random(size * 8))

    # -- internals -------------------------------------------------------------------------

    def _kid(self, key_id: str) -> bytes:
        kid = self._kids.get(key_id) if type(key_id) is str else None
        if kid is None:
            kid = key_id_bytes(key_id)
            if len(self._kids) < 4096:
                self._kids[key_id] = kid
        return kid

    def _need_caller_iv(self) -> None:
        if not self._caller_iv:
            raise MechanismUnsupported(
                "this module does not accept caller-chosen AES-GCM IVs "
                f"(probed: {self.mechanisms.gcm_iv or 'no AES-GCM'}); sealing needs them"
            )

    def _key(self, lease: Lease, kid: bytes, version: int) -> Any:
        cached = lease.keys.get((kid, version))
        if cached is not None:
            return cached
        key_id = str(uuid.UUID(bytes=kid))
        label = label_for(key_id, version)
        with translated("find key"):
            found = list(lease.session.get_objects({Attribute.CLASS: _SECRET,
                                                    Attribute.LABEL: label}))
        if not found:
            self.pool.check_token(lease)
            raise KeyNotFound(f"no master key {key_id} version {version} on token "
                              f"{self.pool.selector}")
        if len(found) > 1:
            raise OperationFailed(f"{len(found)} objects are labelled {label}; "
                                  "refusing to guess", reason=Reason.DUPLICATE_KEY)
        obj = found[0]
        if (kid, version, lease.generation) not in self._verified:
            self._check(obj, label, allow_unsafe=self.allow_unsafe_keys)
            self._verified.add((kid, version, lease.generation))
        lease.keys[(kid, version)] = obj
        return obj

    def _find_label(self, lease: Lease, label: str) -> bool:
        """Whether the token holds a secret key labelled ``label`` (a lost token raises)."""
        with translated("find key"):
            found = list(lease.session.get_objects({Attribute.CLASS: _SECRET,
                                                    Attribute.LABEL: label}))
        if not found:
            self.pool.check_token(lease)  # an empty search may mean a lost token
        return bool(found)

    def _note_version(self, key_id: str, version: int, *, fresh: bool) -> None:
        """Remember a version just made: the latest of a new key id; of a known one only if
        the latest is already known (else it is read from the token when first needed)."""
        kid = key_id_bytes(key_id)
        latest = self._latest.get(kid)
        if fresh or latest is not None:
            self._latest[kid] = max(latest or 0, version)

    def _latest_version(self, lease: Lease, kid: bytes) -> int:
        version = self._latest.get(kid)
        if version is not None:
            return version
        with translated("list key versions"):
            objects = list(lease.session.get_objects({Attribute.CLASS: _SECRET}))
            labels = [obj.label for obj in objects]
        key_id = str(uuid.UUID(bytes=kid))
        versions = [v for k, v in filter(None, map(parse_label, labels)) if k == key_id]
        if not versions:
            self.pool.check_token(lease)
            raise KeyNotFound(f"no master key {key_id} on token {self.pool.selector}")
        self._latest[kid] = max(versions)
        return self._latest[kid]

    @staticmethod
    def _check(obj: Any, label: str, *, allow_unsafe: bool) -> None:
        with translated("read key attributes"):
            attrs = _policy_attributes(obj)
        if not attrs:
            raise UnsafeKey(f"attributes of master key {label} can't be read")
        check_attributes(attrs, label, allow_unsafe=allow_unsafe)

    @staticmethod
    def _kcv(obj: Any) -> str:
        """CKA_CHECK_VALUE, or AES-ECB of a zero block computed in the HSM where the module
        has none (SoftHSM leaves it empty on unwrapped keys, its issue #570)."""
        try:
            value = bytes(obj[Attribute.CHECK_VALUE])
        except (p11e.AttributeTypeInvalid, p11e.AttributeSensitive, p11e.FunctionFailed):
            value = b""
        if value:
            return value.hex()
        block = obj.encrypt(bytes(16), mechanism=Mechanism.AES_ECB)
        return bytes(block[:3]).hex()


def _policy_attributes(obj: Any) -> dict[Any, Any]:
    """The policy attributes and WRAP_WITH_TRUSTED (false where the module doesn't know it);
    {} if even the policy attributes can't be read. Call inside ``translated``."""
    try:
        return dict(obj.get_attributes(_POLICY_READ))
    except p11e.AttributeTypeInvalid:
        pass
    try:
        attrs = dict(obj.get_attributes(list(POLICY_ATTRIBUTES)))
    except p11e.AttributeTypeInvalid:
        return {}
    attrs[TRUST_ATTRIBUTE] = False
    return attrs


def _canonical(key_id: str) -> str:
    """``key_id`` as we write it in labels (lower-case UUID text); :class:`InvalidInput`."""
    return str(uuid.UUID(bytes=key_id_bytes(key_id)))


def _destroy_quietly(obj: Any, label: str) -> None:
    try:
        with translated("destroy rejected key"):
            obj.destroy()
    except HSMError as exc:
        log.error("could not destroy rejected key %s (%s); destroy it by hand", label,
                  exc.reason)
