"""The master keys on one token: finding them, checking them, making and destroying them.

:class:`MasterKeys` is what :class:`~hsm.keys.keyring.Keyring` (and the replication
primitives of :mod:`hsm.keys.transfer`) stand on. The token itself is the record: a key
version is the secret key labelled ``hsm/<key id>/v<version>`` (:mod:`hsm.keys.master`).
Key objects are found once per worker session and kept with it in the lease (they die with
the session's module generation); each key version's attributes are checked against policy
once per module generation. :meth:`MasterKeys.weak_keys` lists, without refusing them, the
key versions whose attributes are weaker than the template (made by older versions, or
planted by someone holding the user PIN).
"""

from __future__ import annotations

import logging
import uuid

from hsm.errors import HSMError, KeyNotFound, OperationFailed, Reason
from hsm.keys.master import (
    ALLOWED_MECHANISMS,
    KEY_BYTES,
    KeyInfo,
    check_key,
    check_version,
    create_template,
    key_id_bytes,
    label_for,
    master_kcv,
    parse_label,
    policy_attributes,
    policy_problems,
)
from hsm.pkcs11 import Lease, SecretKey, SessionPool

__all__ = ["MasterKeys", "canonical", "destroy_quietly"]

log = logging.getLogger(__name__)

_KID_CACHE = 4096  # key id texts remembered with their parsed UUID bytes


class MasterKeys:
    """The master keys of the token ``pool`` sessions. Thread-safe (the caches are plain
    dicts and sets: a race only repeats a lookup)."""

    def __init__(self, pool: SessionPool, *, allow_unsafe: bool = False) -> None:
        self.pool = pool
        self.allow_unsafe = allow_unsafe
        # The mechanisms master keys are restricted to, where the module enforces
        # CKA_ALLOWED_MECHANISMS (the keyring sets None when its probe found it does not).
        self.allowed: tuple[int, ...] | None = ALLOWED_MECHANISMS
        self.latest: dict[bytes, int] = {}  # key UUID -> latest version known
        self.kids: dict[str, bytes] = {}  # key id text -> UUID bytes, parsed once
        self._verified: set[tuple[bytes, int, int]] = set()  # (uuid, version, generation)

    # -- lookups ---------------------------------------------------------------------------

    def kid(self, key_id: str) -> bytes:
        """The UUID bytes of ``key_id`` (remembered); :class:`InvalidInput` if not a UUID."""
        kid = self.kids.get(key_id) if type(key_id) is str else None
        if kid is None:
            kid = key_id_bytes(key_id)
            if len(self.kids) < _KID_CACHE:
                self.kids[key_id] = kid
        return kid

    def find(self, lease: Lease, kid: bytes, version: int) -> SecretKey:
        """Master key ``kid`` version ``version`` in ``lease``'s session, checked against
        policy: :class:`KeyNotFound`, :class:`UnsafeKey`, or :class:`OperationFailed` (reason
        ``duplicate_key``) for two objects under one label."""
        cached = lease.keys.get((kid, version))
        if cached is not None:
            return cached
        key_id = str(uuid.UUID(bytes=kid))
        label = label_for(key_id, version)
        found = lease.find_keys(label)
        if not found:
            self.pool.check_token(lease)
            raise KeyNotFound(f"no master key {key_id} version {version} on token "
                              f"{self.pool.selector}")
        if len(found) > 1:
            raise OperationFailed(f"{len(found)} objects are labelled {label}; "
                                  "refusing to guess", reason=Reason.DUPLICATE_KEY)
        key = found[0]
        if (kid, version, lease.generation) not in self._verified:
            check_key(key, label, allow_unsafe=self.allow_unsafe, allowed=self.allowed)
            self._verified.add((kid, version, lease.generation))
        lease.keys[(kid, version)] = key
        return key

    def holds(self, lease: Lease, label: str) -> bool:
        """Whether the token holds a secret key labelled ``label`` (a lost token raises)."""
        found = lease.find_keys(label)
        if not found:
            self.pool.check_token(lease)  # an empty search may mean a lost token
        return bool(found)

    def latest_version(self, lease: Lease, kid: bytes) -> int:
        """The highest version of ``kid`` (read from the token once, then remembered)."""
        version = self.latest.get(kid)
        if version is not None:
            return version
        labels = [key.label(operation="list key versions")
                  for key in lease.find_keys(operation="list key versions")]
        key_id = str(uuid.UUID(bytes=kid))
        versions = [v for k, v in filter(None, map(parse_label, labels)) if k == key_id]
        if not versions:
            self.pool.check_token(lease)
            raise KeyNotFound(f"no master key {key_id} on token {self.pool.selector}")
        self.latest[kid] = max(versions)
        return self.latest[kid]

    def note_version(self, key_id: str, version: int, *, fresh: bool) -> None:
        """Remember a version just made: the latest of a new key id; of a known one only if
        the latest is already known (else it is read from the token when first needed)."""
        kid = key_id_bytes(key_id)
        latest = self.latest.get(kid)
        if fresh or latest is not None:
            self.latest[kid] = max(latest or 0, version)

    # -- the calls -------------------------------------------------------------------------

    def create(self, key_id: str | None, version: int, *, replicable: bool) -> KeyInfo:
        """Generate master key ``key_id`` (a new UUID if None) version ``version`` inside the
        HSM with the master-key template and check what the module made; a key that breaks
        policy is destroyed. A label already on the token: :class:`OperationFailed`, reason
        ``key_exists``."""
        fresh = key_id is None
        key_id = str(uuid.uuid4()) if key_id is None else canonical(key_id)
        version = check_version(version)
        template = create_template(key_id, version, replicable=replicable,
                                   allowed=self.allowed)
        with self.pool.session() as lease:
            if not fresh and self.holds(lease, template.label):
                raise OperationFailed(f"token {self.pool.selector} already holds master key "
                                      f"{key_id} version {version}", reason=Reason.KEY_EXISTS)
            key = lease.generate_key(template, KEY_BYTES)
            try:
                check_key(key, template.label, allow_unsafe=False, allowed=self.allowed)
                kcv = master_kcv(key)
            except BaseException:
                # The module ignored our template: this key must never be used.
                key.destroy(operation="destroy unsafe key")
                raise
        self.note_version(key_id, version, fresh=fresh)
        log.info("created master key %s version %d (kcv %s%s)", key_id, version, kcv,
                 ", replicable" if replicable else "")
        return KeyInfo(key_id, version, kcv)

    def list_keys(self) -> list[KeyInfo]:
        """Every master key version on the token, read from the HSM itself."""
        found: list[KeyInfo] = []
        with self.pool.session() as lease:
            for key in lease.find_keys(operation="list keys"):
                parsed = parse_label(key.label(operation="list keys"))
                if parsed is not None:
                    found.append(KeyInfo(parsed[0], parsed[1],
                                         master_kcv(key, operation="list keys")))
        found.sort(key=lambda k: (k.key_id, k.version))
        for info in found:
            kid = key_id_bytes(info.key_id)
            self.latest[kid] = max(self.latest.get(kid, 0), info.version)
        return found

    def info(self, key_id: str, version: int | None = None) -> KeyInfo:
        """Key version ``version`` of ``key_id`` (the latest if None) and its KCV."""
        kid = key_id_bytes(key_id)
        with self.pool.session() as lease:
            version = version or self.latest_version(lease, kid)
            return KeyInfo(key_id, version, master_kcv(self.find(lease, kid, version)))

    def has(self, key_id: str, version: int) -> KeyInfo | None:
        """The key version's :class:`KeyInfo` if the token holds it, else None (a key under
        its label that breaks policy raises :class:`UnsafeKey`)."""
        kid = key_id_bytes(key_id)
        version = check_version(version)
        with self.pool.session() as lease:
            try:
                key = self.find(lease, kid, version)
            except KeyNotFound:
                return None
            return KeyInfo(str(uuid.UUID(bytes=kid)), version, master_kcv(key))

    def weak_keys(self) -> list[tuple[KeyInfo, list[str]]]:
        """Every master key version on the token whose attributes are weaker than the
        master-key template, with what is wrong (:func:`~hsm.keys.master.policy_problems`:
        ``["MODIFIABLE", "UNWRAP", "WRAP", "no ALLOWED_MECHANISMS"]`` for a key made by an
        older version), sorted by key id and version. Never refuses such a key
        (:class:`~hsm.errors.UnsafeKey` is for using keys); its KCV is "" where none can be
        computed. HSM trouble raises as usual."""
        weak: list[tuple[KeyInfo, list[str]]] = []
        with self.pool.session() as lease:
            for key in lease.find_keys(operation="list weak keys"):
                parsed = parse_label(key.label(operation="list weak keys"))
                if parsed is None:
                    continue
                attrs = policy_attributes(key)
                problems = (policy_problems(attrs, allowed=self.allowed) if attrs
                            else ["attributes unreadable"])
                if not problems:
                    continue
                try:
                    kcv = master_kcv(key, operation="list weak keys")
                except HSMError as exc:
                    if exc.transient:
                        raise
                    kcv = ""
                weak.append((KeyInfo(parsed[0], parsed[1], kcv), problems))
        weak.sort(key=lambda item: (item[0].key_id, item[0].version))
        return weak

    def destroy(self, key_id: str, version: int) -> None:
        """Destroy one master key version. Irreversible: everything sealed under it is lost."""
        kid = key_id_bytes(key_id)
        with self.pool.session() as lease:
            self.find(lease, kid, version).destroy()
            lease.keys.pop((kid, version), None)
        self.pool.drop_keys()
        self.latest.pop(kid, None)
        log.info("destroyed master key %s version %d", key_id, version)


def canonical(key_id: str) -> str:
    """``key_id`` as we write it in labels (lower-case UUID text); :class:`InvalidInput`."""
    return str(uuid.UUID(bytes=key_id_bytes(key_id)))


def destroy_quietly(key: SecretKey, label: str) -> None:
    """Destroy a key just made that failed its checks; log (never raise) if that fails."""
    try:
        key.destroy(operation="destroy rejected key")
    except HSMError as exc:
        log.error("could not destroy rejected key %s (%s); destroy it by hand", label,
                  exc.reason)
