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

    def check_members(self) -> None:
        """Probe every member whose probe is due; bring it up to date and re-admit it.
        Runs in the monitor thread; tests with a fake clock call it directly."""
        router = self.router
        for member in router.members:
            health = router.health[member.name]
            if not health.probe_due():
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
        """Copy to ``member`` every key a healthy member holds and it lacks, apply destroys
        it missed. Returns the keys copied."""
        router = self.router
        with self._resync_lock:
            _, destroy = self.placement.owed(member.name)
            sources = [m for m in router.serving() if m is not member]
            copied: list[KeyRef] = []
            if sources:
                copied = self._copy_missing(sources[0], member, destroy)
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

    def _copy_missing(self, source: Member[R], member: Member[R],
                      skip: set[KeyRef]) -> list[KeyRef]:
        router = self.router
        have = {(k.key_id, k.version): k for k in
                router.attempt(member, Operation.LIST_KEYS, lambda m: m.keyring.list_keys())}
        want = {(k.key_id, k.version): k for k in
                router.attempt(source, Operation.LIST_KEYS, lambda m: m.keyring.list_keys())}
        copied: list[KeyRef] = []
        for ref, info in sorted(want.items()):
            if ref in skip:
                continue
            if ref in have:
                if have[ref].kcv != info.kcv:
                    raise ReplicationError(
                        f"member {member.name} holds key {ref[0]} v{ref[1]} with KCV "
                        f"{have[ref].kcv}, {source.name} with {info.kcv}")
                continue
            blob = router.attempt(source, Operation.EXPORT_KEY, partial(_export, ref=ref))
            try:
                router.attempt(member, Operation.IMPORT_KEY,
                               partial(_import, ref=ref, blob=blob, kcv=info.kcv))
            except HSMError as exc:
                if exc.reason is Reason.KCV_MISMATCH:
                    raise ReplicationError(
                        f"copy of key {ref[0]} v{ref[1]} on {member.name} would have another "
                        f"KCV than {info.kcv}") from exc
                raise
            copied.append(ref)
        return copied


def _export(member: Member[ClusterKeyring], *, ref: KeyRef) -> bytes:
    return member.keyring.export_key(*ref)


def _import(member: Member[ClusterKeyring], *, ref: KeyRef, blob: bytes, kcv: str) -> None:
    member.keyring.import_key(ref[0], ref[1], blob, expected_kcv=kcv)


def _destroy(member: Member[ClusterKeyring], *, ref: KeyRef) -> None:
    member.keyring.destroy_key(*ref)
