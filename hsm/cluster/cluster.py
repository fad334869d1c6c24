"""A cluster of HSM members served as one: the facade over routing, placement,
re-admission and reports. Retries and failover live in this package and nowhere else.

- :mod:`hsm.cluster.routing`: which member serves a call, deadlines, failover, metrics;
- :mod:`hsm.cluster.placement`: a new key on a quorum of members, rollback, destroy;
- :mod:`hsm.cluster.readmission`: the monitor, probes, resync of a member that comes back;
- :mod:`hsm.cluster.reports`: ``verify`` and per-member counters.

The cluster knows no operation of its own beyond placing keys: callers run a function on a
member's keyring with :meth:`Cluster.call` (routed, with failover) or :meth:`Cluster.call_on`
(one given member), and the :class:`~hsm.cluster.operations.Operation` they pass tells the
failover policy whether the call may be repeated elsewhere::

    cluster.call(Operation.RANDOM, lambda ring: ring.generate_random(16))
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from hsm.cluster.health import Health, State, Transition
from hsm.cluster.member import ClusterKeyring, Member
from hsm.cluster.metrics import ClusterMetrics
from hsm.cluster.operations import Operation
from hsm.cluster.placement import KeyRef, Placement
from hsm.cluster.readmission import Readmission
from hsm.cluster.reports import VerifyReport, counters, verify
from hsm.cluster.routing import CallRecord, Router
from hsm.errors import ClusterUnavailable, ConfigError, HSMError, Reason
from hsm.keys import KeyInfo

__all__ = ["Cluster"]

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R", bound=ClusterKeyring)


class Cluster(Generic[R]):
    """The members of one config, served as one HSM. Thread-safe."""

    def __init__(self, members: Sequence[Member[R]], *, mode: str = "failover",
                 quorum: int = 1, deadline_ms: int = 2000,
                 clock: Callable[[], float] = time.monotonic, probe_interval: float = 0.5,
                 max_probe_interval: float = 5.0,
                 monitor: bool = True, threaded: bool | None = None,
                 executor_workers: int = 16,
                 observer: Callable[[CallRecord], None] | None = None) -> None:
        self.router = Router(members, mode=mode, deadline_ms=deadline_ms, clock=clock,
                             probe_interval=probe_interval,
                             max_probe_interval=max_probe_interval, threaded=threaded,
                             executor_workers=executor_workers, observer=observer)
        if not 1 <= quorum <= len(members):
            raise ConfigError("quorum must be between 1 and the number of members")
        self.placement = Placement(self.router, quorum)
        self.readmission = Readmission(self.router, self.placement,
                                       probe_interval=probe_interval)
        self._monitor_wanted = monitor and len(members) > 1

    # -- life cycle ------------------------------------------------------------------------

    def open(self) -> Cluster[R]:
        """Open every member. A permanent error (wrong PIN, bad module path) raises; a
        member that is merely unreachable starts down and is probed later."""
        opened: list[Member[R]] = []
        try:
            for member in self.members:
                try:
                    member.open()
                    opened.append(member)
                except HSMError as exc:
                    if not exc.transient:
                        raise
                    log.warning("member %s is unreachable at start (%s)", member.name,
                                exc.reason)
                    self.health[member.name].failed(exc.reason)
            if not opened:
                raise ClusterUnavailable("no member could be reached at start",
                                         reason=Reason.NO_MEMBER)
            self.router.start()
        except BaseException:
            self.router.stop()
            for member in opened:
                member.close()
            raise
        if self._monitor_wanted:
            self.readmission.start_monitor()
        return self

    def close(self) -> None:
        self.readmission.stop_monitor()
        self.router.stop()
        for member in self.members:
            try:
                member.close()
            except HSMError as exc:
                log.warning("closing member %s: %s", member.name, exc)

    def __enter__(self) -> Cluster[R]:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the seam --------------------------------------------------------------------------

    def call(self, op: Operation, fn: Callable[[R], T]) -> T:
        """``fn(keyring)`` on the member routing picks; on failure, as the policy says for
        ``op``, on the next one. Raises the member's error, or :class:`ClusterUnavailable`
        with every attempt once no member is left. (The client's hot paths call
        ``cluster.router.call`` itself: one frame less.)"""
        return self.router.call(op, fn)

    def call_on(self, member: Member[R], op: Operation, fn: Callable[[R], T]) -> T:
        """``fn(keyring)`` on ``member`` under the deadline, without failover."""
        return self.router.call_on(member, op, fn)

    # -- keys across members ---------------------------------------------------------------

    def create_key(self) -> KeyInfo:
        """A new master key on ``quorum`` members, every copy with the same KCV."""
        return self.placement.create_key()

    def destroy_key(self, key_id: str, version: int) -> None:
        """Destroy a key version on every member; members that are down do it on return."""
        self.placement.destroy_key(key_id, version)

    def check_members(self) -> None:
        """Probe the members whose probe is due; resync and re-admit those that answer."""
        self.readmission.check_members()

    def resync(self, member: Member[R]) -> list[KeyRef]:
        """Bring ``member`` up to date from a healthy member; the keys copied."""
        return self.readmission.resync(member)

    # -- state and reports -----------------------------------------------------------------

    def verify(self) -> VerifyReport:
        """Every key and version on every member, with matching KCVs; drift by member."""
        return verify(self.router)

    def counters(self, name: str) -> dict[str, int]:
        """Calls, errors, failovers and re-admissions of one member."""
        return counters(self.router.metrics, name)

    def state_of(self, name: str) -> State:
        return self.router.health[name].state

    def serving(self) -> list[Member[R]]:
        """Healthy members in routing order."""
        return self.router.serving()

    @property
    def members(self) -> list[Member[R]]:
        return self.router.members

    @property
    def health(self) -> dict[str, Health]:
        return self.router.health

    @property
    def metrics(self) -> ClusterMetrics:
        return self.router.metrics

    @property
    def transitions(self) -> list[Transition]:
        return self.router.transitions

    @property
    def deadline(self) -> float:
        """Seconds a call on a member may take before the next member is asked."""
        return self.router.deadline

    @deadline.setter
    def deadline(self, seconds: float) -> None:
        self.router.deadline = seconds

    @property
    def probe_interval(self) -> float:
        """Seconds between the monitor's rounds of probes (halved, at most 0.25 s)."""
        return self.readmission.probe_interval

    @probe_interval.setter
    def probe_interval(self, seconds: float) -> None:
        self.readmission.probe_interval = seconds

    @property
    def quorum(self) -> int:
        return self.placement.quorum

    @property
    def pending(self) -> dict[str, set[KeyRef]]:
        """Keys each member is owed (it missed their creation)."""
        return self.placement.pending

    @property
    def pending_destroy(self) -> dict[str, set[KeyRef]]:
        """Key versions each member must still destroy."""
        return self.placement.pending_destroy

    @property
    def observer(self) -> Callable[[CallRecord], None] | None:
        """Called after every attempt on a member (drills record who served what)."""
        return self.router.observer

    @observer.setter
    def observer(self, value: Callable[[CallRecord], None] | None) -> None:
        self.router.observer = value
