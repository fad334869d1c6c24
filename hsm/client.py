"""The client applications use: ``with hsm.open("hsm.toml") as client: ...``.

The client is a cluster of the config's members (:mod:`hsm.cluster`): failover, deadlines,
keys placed on a quorum of members; a one-member config is a cluster of one.
``status()`` reports on every member.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from hsm import envelope
from hsm.cluster import Cluster, HSMMember, Operation, State, VerifyReport
from hsm.cluster.metrics import ClusterMetrics
from hsm.config import Config, load_config
from hsm.context import encode_context
from hsm.envelope.cache import CacheConfig, DataKeyCache
from hsm.errors import HSMError, OperationFailed, Reason
from hsm.keys import DataKey, KeyInfo, Keyring

__all__ = ["Client", "MemberStatus", "open"]

_NOT_OPEN = "client is not open; use 'with hsm.open(...) as client'"
# The hot paths' operations as module constants: an Enum member lookup costs ~60 ns.
_GENERATE_DATA_KEY, _WRAP, _UNWRAP = Operation.GENERATE_DATA_KEY, Operation.WRAP, Operation.UNWRAP


@dataclass(frozen=True)
class MemberStatus:
    """What ``hsm status`` shows for one member. No PIN, no key material."""

    name: str
    module: str
    token_label: str = ""
    token_serial: str = ""
    reachable: bool = False
    os_locking: bool = False
    mechanisms: Mapping[str, Any] = field(default_factory=dict)
    keys: int = 0
    error: str = ""
    state: str = ""
    reason: str = ""  # why the member is in that state (its last change)
    calls: int = 0
    errors: int = 0
    failovers: int = 0
    readmissions: int = 0
    pending: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "module": self.module,
            "token_label": self.token_label,
            "token_serial": self.token_serial,
            "reachable": self.reachable,
            "os_locking": self.os_locking,
            "mechanisms": dict(self.mechanisms),
            "keys": self.keys,
            "error": self.error,
            "state": self.state,
            "reason": self.reason,
            "calls": self.calls,
            "errors": self.errors,
            "failovers": self.failovers,
            "readmissions": self.readmissions,
            "pending": self.pending,
        }


def _status(name: str, module: str, info: Mapping[str, Any], **extra: Any) -> MemberStatus:
    return MemberStatus(
        name=name, module=module, token_label=info.get("token_label", ""),
        token_serial=info.get("token_serial", ""), reachable="error" not in info,
        os_locking=info.get("os_locking", False), mechanisms=info.get("mechanisms", {}),
        keys=info.get("keys", 0), error=info.get("error", ""), **extra,
    )


class Client:
    """Master keys and data keys over the members of one config. Thread-safe: share one
    per process (create it after ``fork``)."""

    def __init__(self, config: Config, *, allow_unsafe_keys: bool = False,
                 monitor: bool = True, cache: CacheConfig | None = None) -> None:
        self.config = config
        self.allow_unsafe_keys = allow_unsafe_keys
        alone = len(config.members) == 1  # nowhere to fail over to: recover inside calls
        self.members = [HSMMember(m, allow_unsafe_keys=allow_unsafe_keys,
                                  inline_recovery=alone) for m in config.members]
        self.cluster: Cluster[Keyring] = Cluster(self.members, mode=config.cluster.mode,
                               quorum=config.cluster.quorum,
                               deadline_ms=config.cluster.deadline_ms, monitor=monitor)
        self._router = self.cluster.router  # the hot paths call its seam directly
        self._open = False
        # The data-key cache (docs/CACHE.md): off unless asked for.
        self._cache = (None if cache is None
                       else DataKeyCache(cache, self.cluster.metrics.registry))

    def open(self) -> Client:
        if not self._open:
            self.cluster.open()
            self._open = True
        return self

    def close(self) -> None:
        if self._cache is not None:
            self._cache.clear()  # every cached plaintext key zeroed
        if self._open:
            self._open = False
            self.cluster.close()

    def __enter__(self) -> Client:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def metrics(self) -> ClusterMetrics:
        """Prometheus metrics; serve ``client.metrics.registry``."""
        return self.cluster.metrics

    @property
    def cache(self) -> DataKeyCache | None:
        """The data-key cache (``None`` unless the client was made with ``cache=``)."""
        return self._cache

    @property
    def _primary(self) -> HSMMember:
        """The first member of the config (tests and diagnostics)."""
        return self.members[0]

    @property
    def _keyring(self) -> Keyring:
        if not self.members[0].connected:
            raise OperationFailed(_NOT_OPEN, reason=Reason.NOT_OPEN)
        return self.members[0].keyring

    def _cluster(self) -> Cluster[Keyring]:
        if not self._open:
            raise OperationFailed(_NOT_OPEN, reason=Reason.NOT_OPEN)
        return self.cluster

    # -- master keys -----------------------------------------------------------------------

    def create_key(self) -> KeyInfo:
        """Create a master key (AES-256, non-extractable) on at least ``quorum`` members."""
        return self._cluster().create_key()

    def list_keys(self) -> list[KeyInfo]:
        """Every master key id and version the HSM holds, with its KCV."""
        return self._cluster().call(Operation.LIST_KEYS, lambda ring: ring.list_keys())

    def key_members(self) -> tuple[list[tuple[KeyInfo, list[str]]], dict[str, str]]:
        """The cluster's view of its keys: every key version any member holds, with the
        members holding it (in config order), and the members that could not be asked,
        with why. A version whose copies disagree is listed once per KCV."""
        listings, errors = self._cluster().holdings()
        seen: dict[tuple[str, int, str], list[str]] = {}
        for member in self.members:
            for (key_id, version), kcv in listings.get(member.name, {}).items():
                seen.setdefault((key_id, version, kcv), []).append(member.name)
        return ([(KeyInfo(k, v, kcv), names) for (k, v, kcv), names in sorted(seen.items())],
                errors)

    def key_info(self, key_id: str, version: int | None = None) -> KeyInfo:
        return self._cluster().call(Operation.KEY_INFO,
                                    lambda ring: ring.key_info(key_id, version))

    # -- data keys -------------------------------------------------------------------------

    # The three data-key calls are the hot path: straight to the cluster's seam, whose own
    # check answers "not open" (a cluster of one calls its keyring inline).

    def generate_data_key(self, key_id: str, context: Mapping[str, str] | None = None) -> DataKey:
        """A fresh 32-byte data key: ``.plaintext`` (bytearray) and ``.wrapped`` (bytes)."""
        return self._router.call(_GENERATE_DATA_KEY,
                                 lambda ring: ring.generate_data_key(key_id, context))

    def wrap(self, key_id: str, plaintext: bytes | bytearray,
             context: Mapping[str, str] | None = None) -> bytes:
        """Seal key material under ``key_id``, bound to ``context``."""
        return self._router.call(_WRAP,
                                 lambda ring: ring.wrap(key_id, plaintext, context))

    def unwrap(self, blob: bytes, context: Mapping[str, str] | None = None) -> bytearray:
        """Open a sealed blob with the same context it was sealed with."""
        return self._router.call(_UNWRAP, lambda ring: ring.unwrap(blob, context))

    def generate_random(self, size: int) -> bytes:
        """``size`` (1 to 1024) bytes from an HSM's random number generator."""
        return self._cluster().call(Operation.RANDOM, lambda ring: ring.generate_random(size))

    # -- direct encryption (AWS KMS Encrypt / Decrypt) --------------------------------------

    def encrypt_direct(self, key_id: str, plaintext: bytes | bytearray | memoryview,
                       context: Mapping[str, str] | None = None) -> bytes:
        """Encrypt 1 to 4096 bytes inside the HSM under ``key_id``, bound to ``context``: no
        data key. More raises :class:`hsm.InvalidInput`; use :meth:`encrypt` for that."""
        return self._cluster().call(Operation.ENCRYPT_DIRECT,
                                    lambda ring: ring.encrypt_direct(key_id, plaintext, context))

    def decrypt_direct(self, blob: bytes, context: Mapping[str, str] | None = None) -> bytes:
        """Open a blob from :meth:`encrypt_direct` with the same context."""
        return self._cluster().call(Operation.DECRYPT_DIRECT,
                                    lambda ring: ring.decrypt_direct(blob, context))

    # -- envelope encryption ---------------------------------------------------------------

    def encrypt(self, key_id: str, plaintext: bytes | bytearray,
                context: Mapping[str, str] | None = None, *,
                frame_size: int = envelope.DEFAULT_FRAME) -> bytes:
        """Envelope-encrypt ``plaintext``: a data key from the HSM (or the cache) encrypts
        it here; the message carries the data key sealed under ``key_id``."""
        data_key, owned = self._data_key(key_id, context, len(plaintext))
        try:
            return envelope.encrypt(plaintext, data_key, context, frame_size=frame_size)
        finally:
            if owned:
                data_key.wipe()

    def decrypt(self, message: bytes, context: Mapping[str, str] | None = None) -> bytes:
        """Decrypt a message from :meth:`encrypt`. With ``context`` given, a message made
        under another context raises :class:`hsm.ContextMismatch` saying so."""
        return envelope.decrypt(message, self._unwrapper(), context)

    def encrypt_stream(self, key_id: str, src: BinaryIO, dst: BinaryIO,
                       context: Mapping[str, str] | None = None, *,
                       frame_size: int = envelope.DEFAULT_FRAME,
                       progress: Callable[[int], None] | None = None,
                       ) -> envelope.StreamSummary:
        """Envelope-encrypt a binary stream of any size in constant memory."""
        data_key, owned = self._data_key(key_id, context, None)
        try:
            return envelope.encrypt_stream(src, dst, data_key, context,
                                           frame_size=frame_size, progress=progress)
        finally:
            if owned:
                data_key.wipe()

    def decrypt_stream(self, src: BinaryIO, dst: BinaryIO,
                       context: Mapping[str, str] | None = None, *,
                       progress: Callable[[int], None] | None = None,
                       ) -> envelope.StreamSummary:
        """Decrypt a stream; each frame is verified before it is written to ``dst``."""
        return envelope.decrypt_stream(src, dst, self._unwrapper(), context,
                                       progress=progress)

    def _data_key(self, key_id: str, context: Mapping[str, str] | None,
                  size: int | None) -> tuple[DataKey, bool]:
        """A data key for one message of ``size`` bytes (None: unknown, a stream) and
        whether the caller owns it (and wipes it after use). With the cache, a copy of a
        cached key, which the caller owns too."""
        cache = self._cache
        if cache is None:
            return self.generate_data_key(key_id, context), True
        return cache.for_encrypt(key_id, encode_context(context), size,
                                 lambda: self.generate_data_key(key_id, context)), True

    def _unwrapper(self) -> envelope.Unwrapper:
        """What opens a message's sealed data key (the plaintext it returns is wiped by
        the caller after use)."""
        cache = self._cache
        if cache is None:
            return self.unwrap
        unwrap = self.unwrap

        def cached(blob: bytes, context: dict[str, str]) -> bytearray:
            return cache.for_decrypt(blob, encode_context(context),
                                     lambda: unwrap(blob, context))

        return cached

    # -- cluster ---------------------------------------------------------------------------

    def verify(self) -> VerifyReport:
        """Every key and version on every member with matching KCVs; drift by member."""
        return self._cluster().verify()

    def resync(self, member: str | None = None, *,
               destroy_orphans: bool = False) -> dict[str, Any]:
        """Bring ``member`` (default: every member) up to date now: copy the key versions it
        lacks that reached quorum; with ``destroy_orphans``, also destroy every key version
        held by fewer members than the quorum (no caller can have received it). Returns
        ``{"copied": {member: [(key_id, version)]}, "destroyed": {...}, "not_served":
        {member: why}}``."""
        return self._cluster().repair(member, destroy_orphans=destroy_orphans)

    def status(self) -> list[MemberStatus]:
        """One :class:`MemberStatus` per member: health, counters, token, mechanisms. Only
        a healthy member is asked to describe itself (under the deadline); one that is out
        is described by its state and its last error, and never logged in to again."""
        cluster = self._cluster()
        statuses = []
        for member in self.members:
            health = cluster.health[member.name]
            if health.state is State.HEALTHY:
                info = self.describe(member.name)
            else:
                why = cluster.router.last_error.get(member.name) or str(health.last_reason or "")
                info = {"error": why or f"member is {health.state.value}"}
            statuses.append(_status(
                member.name, member.config.module, info, state=health.state.value,
                reason=str(health.last_reason or ""), pending=len(cluster.pending[member.name]),
                **cluster.counters(member.name)))
        return statuses

    def describe(self, member: str) -> dict[str, Any]:
        """Token, OS locking, probed mechanisms and key count of one member, asked under the
        deadline (a hung member does not hang this); ``{"error": ...}`` if it can't say."""
        cluster = self._cluster()
        target = next((m for m in self.members if m.name == member), None)
        if target is None:
            raise OperationFailed(f"no member named {member!r}", reason=Reason.INVALID_INPUT)
        try:
            return cluster.call_on(target, Operation.DESCRIBE, lambda ring: ring.describe())
        except HSMError as exc:
            return {"error": str(exc)}

    def __repr__(self) -> str:
        where = self.config.path or "<config>"
        state = "open" if self._open else "closed"
        return f"<hsm.Client {where} members={len(self.config.members)} {state}>"


def open(
    config: Config | str | os.PathLike[str] | None = None, *, allow_unsafe_keys: bool = False,
    cache: CacheConfig | None = None,
) -> Client:
    """Open a client on the config at ``config`` (or ``$HSM_CONFIG``, or ``./hsm.toml``).
    ``cache``: reuse data keys within these limits (off by default; ``docs/CACHE.md``)."""
    if not isinstance(config, Config):
        config = load_config(config)
    return Client(config, allow_unsafe_keys=allow_unsafe_keys, cache=cache).open()
