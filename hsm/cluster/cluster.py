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
from functools import partial
from typing import Any, Generic, TypeVar

from hsm.cluster.health import Health, State, Transition
from hsm.cluster.member import ClusterKeyring, Member
from hsm.cluster.metrics import ClusterMetrics
from hsm.cluster.operations import Operation
from hsm.cluster.placement import KeyRef, Placement
from hsm.cluster.policy import Attempt, outcome_of
from hsm.cluster.readmission import Readmission
from hsm.cluster.reports import VerifyReport, counters, holdings, orphans_of, verify
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
        """Open every member at once, each under the deadline, and serve with those that
        answer. A member whose PIN is refused is disabled for good; one that fails or does
        not answer in time starts down (or suspect) and comes in later through the probe.
        Raises only when no member opened: the error names every member and why."""
        router = self.router
        router.start_executors()
        try:
            outcome = router.open_members()
            opened = [m for m in self.members if outcome[m.name] is None]
            if not opened:
                raise _none_opened(outcome)
            router.start()
        except BaseException:
            router.close_members()
            router.stop()
            raise
        if self._monitor_wanted:
            self.readmission.start_monitor()
        return self

    def close(self) -> None:
        """Stop the monitor and close every member (one whose calls hang is not waited
        for: a command exits right after it reports)."""
        self.readmission.stop_monitor()
        self.router.close_members()
        self.router.stop()

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
        """A new master key on ``quorum`` members, every copy with the same KCV. Too few
        healthy members: those that are down are probed first (within the deadline), so a
        member healed a moment ago counts."""
        if len(self.serving()) < self.quorum:
            self.readmission.check_members(now=True)
        return self.placement.create_key()

    def destroy_key(self, key_id: str, version: int) -> None:
        """Destroy a key version on every member; members that are down do it on return."""
        self.placement.destroy_key(key_id, version)

    def check_members(self, *, now: bool = False) -> None:
        """Probe the members whose probe is due (``now``: every member that is down or
        answered again, whatever its backoff); resync and re-admit those that answer."""
        self.readmission.check_members(now=now)

    def resync(self, member: Member[R]) -> list[KeyRef]:
        """Bring ``member`` up to date from a healthy member; the keys copied."""
        return self.readmission.resync(member)

    def repair(self, member: str | None = None, *,
               destroy_orphans: bool = False) -> dict[str, Any]:
        """``hsm cluster resync``: bring ``member`` (default: every member) up to date now,
        and with ``destroy_orphans`` destroy every key version held by fewer members than
        the quorum (no caller can have received it) wherever it is held. Down members are
        probed first. Returns what was copied and destroyed, by member."""
        names = [m.name for m in self.members]
        if member is not None and member not in names:
            raise ConfigError(f"no member named {member!r} (members: {', '.join(names)})")
        self.readmission.check_members(now=True)
        targets = [m for m in self.members if member in (None, m.name)]
        copied: dict[str, list[KeyRef]] = {}
        problems: dict[str, str] = {}
        for target in targets:
            state = self.state_of(target.name)
            if state is not State.HEALTHY:
                problems[target.name] = f"{state.value} ({self.health[target.name].last_reason})"
                continue
            copied[target.name] = self.readmission.resync(target)
        destroyed: dict[str, list[KeyRef]] = {}
        if destroy_orphans:
            listings, errors = holdings(self.router)
            orphans = orphans_of(listings, len(errors), self.quorum)
            for target in self.members:
                for ref in sorted(orphans & set(listings.get(target.name, {}))):
                    self.router.attempt(target, Operation.DESTROY_KEY,
                                        partial(_destroy, ref=ref))
                    destroyed.setdefault(target.name, []).append(ref)
                    log.warning("destroyed orphan key %s v%d on %s (below quorum %d)",
                                ref[0], ref[1], target.name, self.quorum)
        return {"copied": copied, "destroyed": destroyed, "not_served": problems}

    # -- state and reports -----------------------------------------------------------------

    def holdings(self) -> tuple[dict[str, dict[KeyRef, str]], dict[str, str]]:
        """``(member -> {(key id, version) -> KCV}, member -> why it could not be listed)``:
        what every member holds, asked under the deadline."""
        return holdings(self.router)

    def verify(self) -> VerifyReport:
        """Every key and version on every member, with matching KCVs; drift by member (down
        members are probed first, so one that is back is counted as back)."""
        self.readmission.check_members(now=True)
        return verify(self.router, self.quorum)

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


def _none_opened(outcome: dict[str, HSMError | None]) -> HSMError:
    """The error for a cluster none of whose members opened: a single member's own error;
    for several, the common error class if they all failed alike (every PIN refused, say),
    else :class:`ClusterUnavailable`, each naming every member and why."""
    errors = {name: err for name, err in outcome.items() if err is not None}
    if len(errors) == 1:
        return next(iter(errors.values()))
    why = "; ".join(f"{name}: {err.message}" for name, err in errors.items())
    message = f"no member could be opened ({why})"
    kinds = {type(err) for err in errors.values()}
    first = next(iter(errors.values()))
    attempts = tuple(Attempt(name, outcome_of(err), err.reason, 0.0)
                     for name, err in errors.items())
    if len(kinds) == 1 and not isinstance(first, ClusterUnavailable):
        return type(first)(message, reason=first.reason)
    return ClusterUnavailable(message, reason=Reason.NO_MEMBER, attempts=attempts)


def _destroy(member: Member[ClusterKeyring], *, ref: KeyRef) -> None:
    member.keyring.destroy_key(*ref)
