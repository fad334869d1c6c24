"""Placement: a new key on a quorum of members, rollback, destroy, and the work still owed.

A key is generated on one member and copied to the others wrapped under the trusted cluster
wrapping key (``hsm cluster init``); it counts once ``quorum`` members hold it with matching
KCVs, else every copy is destroyed again. Members that missed it (down, failing) are owed
it (``pending``), and members that missed a destroy are owed that (``pending_destroy``):
:mod:`hsm.cluster.readmission` settles both when the member comes back.

The pending sets live in memory; the HSMs themselves are the record of which keys exist,
so a resync lists both members rather than trusting these sets.
"""

from __future__ import annotations

import logging
import threading
import uuid
from typing import Generic, TypeVar

from hsm.cluster.health import State
from hsm.cluster.member import ClusterKeyring
from hsm.cluster.operations import Operation
from hsm.cluster.routing import Router
from hsm.errors import HSMError, QuorumNotReached, Reason, ReplicationError
from hsm.keys import KeyInfo

__all__ = ["KeyRef", "Placement"]

log = logging.getLogger(__name__)

R = TypeVar("R", bound=ClusterKeyring)
KeyRef = tuple[str, int]


class Placement(Generic[R]):
    """Creating and destroying keys across the members of one router."""

    def __init__(self, router: Router[R], quorum: int) -> None:
        self.router = router
        self.quorum = quorum
        names = [m.name for m in router.members]
        self.pending: dict[str, set[KeyRef]] = {name: set() for name in names}
        self.pending_destroy: dict[str, set[KeyRef]] = {name: set() for name in names}
        self._lock = threading.Lock()  # the pending sets; never held around a member call

    def create_key(self) -> KeyInfo:
        """A new master key on ``quorum`` members at least, every copy with the same KCV.

        Generated on the first healthy member (never retried elsewhere), copied to the
        others under the trusted wrapping key. Too few copies or a KCV mismatch: every copy
        is destroyed and the error says why.
        """
        router = self.router
        serving = router.serving()
        if len(serving) < self.quorum:
            raise QuorumNotReached(
                f"{len(serving)} member(s) healthy, quorum is {self.quorum}; no key created")
        key_id = str(uuid.uuid4())
        replicable = len(router.members) > 1
        primary = serving[0]
        info = router.attempt(primary, Operation.CREATE_KEY, lambda m: m.keyring.create_key(
            key_id=key_id, version=1, replicable=replicable))
        copies: dict[str, KeyInfo] = {primary.name: info}
        problems: dict[str, str] = {}
        if replicable:
            try:
                blob = router.attempt(primary, Operation.EXPORT_KEY,
                                      lambda m: m.keyring.export_key(key_id, 1))
            except HSMError as exc:
                self._rollback(key_id, copies)
                raise QuorumNotReached(
                    f"key {key_id} could not be exported from {primary.name} for "
                    f"replication ({exc}); rolled back") from exc
            for member in router.members:
                if member is primary:
                    continue
                state = router.health[member.name].state
                if state is not State.HEALTHY:
                    problems[member.name] = state.value
                    continue
                try:
                    got = router.attempt(member, Operation.IMPORT_KEY,
                                         lambda m: m.keyring.import_key(
                                             key_id, 1, blob, expected_kcv=info.kcv))
                except HSMError as exc:
                    if exc.reason is Reason.KCV_MISMATCH:
                        # The member refused (or kept its own) copy: nothing of ours there.
                        self._rollback(key_id, copies)
                        raise ReplicationError(
                            f"key {key_id}: the copy on {member.name} would have another "
                            "KCV (another cluster wrapping key?); rolled back") from exc
                    problems[member.name] = exc.reason
                    continue
                copies[member.name] = got
        if len(copies) < self.quorum:
            self._rollback(key_id, copies)
            why = ", ".join(f"{k}: {v}" for k, v in sorted(problems.items()))
            raise QuorumNotReached(
                f"key {key_id} reached {len(copies)} member(s), quorum is {self.quorum} "
                f"({why}); rolled back")
        with self._lock:
            for member in router.members:
                if member.name not in copies:
                    self.pending[member.name].add((key_id, 1))
        log.info("created master key %s on %s (kcv %s)", key_id, ", ".join(copies), info.kcv)
        return info

    def _rollback(self, key_id: str, copies: dict[str, KeyInfo]) -> None:
        for name in copies:
            try:
                self.router.attempt(self.router.by_name[name], Operation.DESTROY_KEY,
                                    lambda m: m.keyring.destroy_key(key_id, 1))
            except HSMError as exc:
                log.error("rollback: key %s could not be destroyed on %s (%s); "
                          "destroy it by hand", key_id, name, exc)

    def destroy_key(self, key_id: str, version: int) -> None:
        """Destroy a key version on every member; members that are down do it on return."""
        router = self.router
        for member in router.members:
            if router.health[member.name].state is not State.HEALTHY:
                with self._lock:
                    self.pending_destroy[member.name].add((key_id, version))
                continue
            router.attempt(member, Operation.DESTROY_KEY,
                           lambda m: m.keyring.destroy_key(key_id, version))
        with self._lock:
            for keys in self.pending.values():
                keys.discard((key_id, version))

    def owed(self, name: str) -> tuple[set[KeyRef], set[KeyRef]]:
        """Copies of (keys pending for, keys to destroy on) member ``name``."""
        with self._lock:
            return set(self.pending[name]), set(self.pending_destroy[name])

    def settled(self, name: str) -> None:
        """Member ``name`` is up to date: nothing is owed to it any more."""
        with self._lock:
            self.pending[name].clear()
            self.pending_destroy[name].clear()
