"""Re-admission: the monitor that probes members that are down, brings them up to date from
a healthy member (the HSMs are the record: both are listed), then lets them serve again."""

from __future__ import annotations

import logging
import threading
from functools import partial
from typing import Generic, TypeVar

from hsm.cluster.member import ClusterKeyring, Member
from hsm.cluster.operations import Operation
from hsm.cluster.placement import KeyRef, Placement
from hsm.cluster.routing import Router
from hsm.errors import HSMError, Reason, ReplicationError

__all__ = ["Readmission"]

log = logging.getLogger(__name__)

R = TypeVar("R", bound=ClusterKeyring)


class Readmission(Generic[R]):
    """Probes, resync and re-admission for the members of one router."""

    def __init__(self, router: Router[R], placement: Placement[R], *,
                 probe_interval: float) -> None:
        self.router = router
        self.placement = placement
        self.probe_interval = probe_interval
        self._stop = threading.Event()
        self._monitor: threading.Thread | None = None
        self._resync_lock = threading.Lock()

    def start_monitor(self) -> None:
        self._stop.clear()
        self._monitor = threading.Thread(target=self._monitor_loop, name="hsm-monitor",
                                         daemon=True)
        self._monitor.start()

    def stop_monitor(self) -> None:
        self._stop.set()
        if self._monitor is not None:
            self._monitor.join(timeout=5)
            self._monitor = None

    def _monitor_loop(self) -> None:
        while not self._stop.wait(min(self.probe_interval / 2, 0.25)):
            try:
                self.check_members()
            except Exception:  # the monitor must survive anything; the log says what
                log.exception("member monitor")

    def check_members(self, *, now: bool = False) -> None:
        """Probe every member whose probe is due (``now``: every member that is down or
        answered again, whatever its backoff); bring it up to date and re-admit it. Runs in
        the monitor thread; placement and verify call it with ``now`` before they count
        members; tests with a fake clock call it directly."""
        router = self.router
        for member in router.members:
            health = router.health[member.name]
            if not health.probe_due(now=now):
                continue
            try:
                router.attempt(member, Operation.PING, lambda m: m.ping())
                self.resync(member)
            except HSMError as exc:
                health.probe_failed(exc.reason)
                log.info("member %s still down (%s)", member.name, exc.reason)
                continue
            health.readmitted()
            router.metrics.readmissions.labels(member.name).inc()

    def resync(self, member: Member[R]) -> list[KeyRef]:
        """Bring ``member`` up to date: copy to it every key version that at least
        ``quorum`` healthy members hold and it lacks, apply the destroys it missed. A key
        below quorum (an orphan) is never copied, so a key only one member holds (a create
        that timed out, or one destroyed elsewhere while that member was away) never
        spreads. Returns the key versions copied."""
        router = self.router
        with self._resync_lock:
            _, destroy = self.placement.owed(member.name)
            sources = [m for m in router.serving() if m is not member]
            copied: list[KeyRef] = []
            if sources:
                copied = self._copy_missing(sources, member, destroy)
            for ref in sorted(destroy):
                try:
                    router.attempt(member, Operation.DESTROY_KEY, partial(_destroy, ref=ref))
                except HSMError as exc:
                    if exc.reason is not Reason.KEY_NOT_FOUND:
                        raise
            self.placement.settled(member.name)
            if copied:
                log.info("member %s brought up to date: %d key(s) copied", member.name,
                         len(copied))
            return copied

    def _copy_missing(self, sources: list[Member[R]], member: Member[R],
                      skip: set[KeyRef]) -> list[KeyRef]:
        router = self.router
        have = {(k.key_id, k.version): k.kcv for k in
                router.attempt(member, Operation.LIST_KEYS, lambda m: m.keyring.list_keys())}
        holders: dict[KeyRef, list[tuple[Member[R], str]]] = {}
        for source in sources:
            try:
                listed = router.attempt(source, Operation.LIST_KEYS,
                                        lambda m: m.keyring.list_keys())
            except HSMError as exc:
                log.info("resync of %s: %s not listed (%s)", member.name, source.name,
                         exc.reason)
                continue
            for info in listed:
                holders.setdefault((info.key_id, info.version), []).append((source, info.kcv))
        copied: list[KeyRef] = []
        for ref, held in sorted(holders.items(), key=lambda item: item[0]):
            source, kcv = held[0]
            if ref in have:
                if have[ref] != kcv:
                    raise ReplicationError(
                        f"member {member.name} holds key {ref[0]} v{ref[1]} with KCV "
                        f"{have[ref]}, {source.name} with {kcv}")
                continue
            if ref in skip or len(held) < self.placement.quorum:
                continue  # destroyed while it was away, or an orphan: never copied
            blob = router.attempt(source, Operation.EXPORT_KEY, partial(_export, ref=ref))
            try:
                router.attempt(member, Operation.IMPORT_KEY,
                               partial(_import, ref=ref, blob=blob, kcv=kcv))
            except HSMError as exc:
                if exc.reason is Reason.KCV_MISMATCH:
                    raise ReplicationError(
                        f"copy of key {ref[0]} v{ref[1]} on {member.name} would have another "
                        f"KCV than {kcv}") from exc
                raise
            copied.append(ref)
        return copied


def _export(member: Member[ClusterKeyring], *, ref: KeyRef) -> bytes:
    return member.keyring.export_key(*ref)


def _import(member: Member[ClusterKeyring], *, ref: KeyRef, blob: bytes, kcv: str) -> None:
    member.keyring.import_key(ref[0], ref[1], blob, expected_kcv=kcv)


def _destroy(member: Member[ClusterKeyring], *, ref: KeyRef) -> None:
    member.keyring.destroy_key(*ref)
