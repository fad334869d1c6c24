"""Routing: which member serves a call, attempts under the deadline, failover, metrics.

``failover`` mode sends each call to the first healthy member in config order; ``balanced``
to the healthy member with the fewest calls in flight. Members that are down are tried last,
as a last resort, so that no idempotent call fails while any member could serve it; suspect
members (a call to them outlived the deadline) get nothing new.

Deadline: with more than one member, each call runs in a thread of its member's executor and
the caller waits ``deadline_ms``; past that the member turns suspect and the call moves on,
while the late call finishes in the background. A one-member cluster calls inline (there is
nowhere to fail over to, and the hand-over would cost more than the call): that fast path is
the first lines of :meth:`Router.call`, and nowhere else.

The router knows no operation: it runs the caller's function on a member's keyring, and the
:class:`~hsm.cluster.operations.Operation` says what the failover policy needs to know.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from functools import partial
from typing import Any, Generic, TypeVar

from hsm.cluster.executor import MemberExecutor
from hsm.cluster.health import Health, State, Transition
from hsm.cluster.member import ClusterKeyring, Member
from hsm.cluster.metrics import STATE_VALUES, ClusterMetrics
from hsm.cluster.operations import Operation
from hsm.cluster.policy import Attempt, Decision, FailoverPolicy, Outcome, exhausted, outcome_of
from hsm.errors import ConfigError, HSMError, HSMUnavailable, OperationFailed, PinError, Reason

__all__ = ["CallRecord", "Router"]

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R", bound=ClusterKeyring)

NOT_OPEN = "not open: use 'with hsm.open(...) as client' (or open the cluster first)"


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One attempt on one member, for observers (drills): who, what, how it went, when
    (``time.monotonic()`` at the start) and how long, in milliseconds."""

    member: str
    operation: Operation
    outcome: Outcome
    reason: Reason | None
    started: float
    ms: float


class Router(Generic[R]):
    """The members of a cluster, their health, and the one way to call them."""

    def __init__(self, members: Sequence[Member[R]], *, mode: str = "failover",
                 deadline_ms: int = 2000, clock: Callable[[], float] = time.monotonic,
                 probe_interval: float = 0.5, max_probe_interval: float = 5.0,
                 threaded: bool | None = None, executor_workers: int = 16,
                 observer: Callable[[CallRecord], None] | None = None) -> None:
        if not members:
            raise ConfigError("a cluster needs at least one member")
        names = [m.name for m in members]
        if len(set(names)) != len(names):
            raise ConfigError("member names must be unique")
        if mode not in ("failover", "balanced"):
            raise ConfigError("mode must be 'failover' or 'balanced'")
        self.members = list(members)
        self.by_name = {m.name: m for m in members}
        self.mode = mode
        self.deadline = deadline_ms / 1000.0
        self.metrics = ClusterMetrics(names, [op.value for op in Operation])
        self.transitions: list[Transition] = []
        # Each member's latest error message (``hsm status`` says why a member is out).
        self.last_error: dict[str, str] = {}
        self.health = {name: Health(name, clock=clock, probe_interval=probe_interval,
                                    max_probe_interval=max_probe_interval,
                                    on_change=self._changed) for name in names}
        self.threaded = len(members) > 1 if threaded is None else threaded
        self._workers = executor_workers
        self._executors: dict[str, MemberExecutor] = {}
        self._calls = {(name, op): self.metrics.calls[(name, op.value)]
                       for name in names for op in Operation}
        self._latency = {name: self.metrics.latency.labels(name) for name in names}
        # Called after every attempt on a member (drills record who served what, when).
        self.observer = observer
        self.opened = False
        # The one-member fast path: the keyring and the call counters, while open.
        self._single_ring: R | None = None
        self._single_count: dict[Operation, Callable[[], int]] = {}

    # -- life cycle ------------------------------------------------------------------------

    def start_executors(self) -> None:
        """The threads calls run in under the deadline (daemons: a hung call never keeps
        the process from exiting)."""
        if self.threaded and not self._executors:
            self._executors = {m.name: MemberExecutor(self._workers, f"hsm-{m.name}")
                               for m in self.members}

    def start(self) -> None:
        """The members are open (those that could be): calls may flow."""
        self.start_executors()
        self.opened = True
        if len(self.members) == 1:
            only = self.members[0]
            self._single_count = {op: self._calls[(only.name, op)].inc for op in Operation}
            self._single_ring = only.keyring

    def open_members(self) -> dict[str, HSMError | None]:
        """Open every member, all at once, each under the deadline (a hung module or token
        must not keep the others from serving). Returns each member's error (None: it
        opened). A refused PIN disables the member; any other failure leaves it down, to be
        probed later; no answer in time leaves it suspect while its open goes on, and the
        monitor brings it in once it has answered."""
        outcome: dict[str, HSMError | None] = {}
        if not self._executors:  # one member, or no threads asked for: inline
            for member in self.members:
                try:
                    member.open()
                    outcome[member.name] = None
                except HSMError as err:
                    outcome[member.name] = err
                    self._open_failed(member.name, err)
            return outcome
        futures = {m.name: self._executors[m.name].submit(m.open) for m in self.members}
        until = time.monotonic() + self.deadline
        for name, future in futures.items():
            try:
                future.result(timeout=max(0.0, until - time.monotonic()))
                outcome[name] = None
            except FutureTimeout:
                self.health[name].timed_out()
                future.add_done_callback(partial(self._late, name))
                late = HSMUnavailable(
                    f"member {name}: no answer within {self.deadline * 1000:.0f} ms while "
                    "opening (module, token, login, mechanisms)", reason=Reason.DEADLINE)
                outcome[name] = late
                self.last_error[name] = late.message
            except HSMError as err:
                outcome[name] = err
                self._open_failed(name, err)
        return outcome

    def _open_failed(self, name: str, err: HSMError) -> None:
        self.last_error[name] = err.message
        if isinstance(err, PinError):
            self._disable(name, err)
            return
        log.warning("member %s could not be opened (%s): %s; it starts down and is probed "
                    "later", name, err.reason, err.message)
        self.health[name].failed(err.reason)

    def _late(self, name: str, future: Future[Any]) -> None:
        """A call that outlived its deadline has returned."""
        exc = None if future.cancelled() else future.exception()
        if isinstance(exc, PinError):
            self.health[name].hung_call_returned(None)
            self._disable(name, exc)
        else:
            self.health[name].hung_call_returned(_error_of(future))

    def close_members(self) -> None:
        """Close every member, each under the deadline; one whose calls hang is left to the
        process's exit rather than waited for."""
        for member in self.members:
            executor = self._executors.get(member.name)
            if self.health[member.name].hung:
                log.warning("member %s still has a call that never returned; not waiting "
                            "for it to close", member.name)
                continue
            try:
                if executor is None:
                    member.close()
                else:
                    executor.submit(member.close).result(timeout=self.deadline)
            except FutureTimeout:
                log.warning("closing member %s: no answer within %.0f ms; left to the "
                            "process's exit", member.name, self.deadline * 1000)
            except HSMError as exc:
                log.warning("closing member %s: %s", member.name, exc)

    def stop(self) -> None:
        self.opened = False
        self._single_ring = None
        for executor in self._executors.values():
            executor.shutdown()
        self._executors = {}

    # -- calls -----------------------------------------------------------------------------

    def call(self, op: Operation, fn: Callable[[R], T]) -> T:
        """``fn(keyring)`` on the member routing picks, failing over as the policy says for
        ``op``. (A closure per call costs less than ``*args`` forwarding: measured.)"""
        ring = self._single_ring
        if ring is not None:  # one member: inline, nowhere to fail over to
            self._single_count[op]()
            try:
                return fn(ring)
            except HSMError as err:
                self._single_failed(err)
                raise
        if not self.opened:
            raise OperationFailed(NOT_OPEN, reason=Reason.NOT_OPEN)
        return self._routed(op, lambda m: fn(m.keyring))

    def call_on(self, member: Member[R], op: Operation, fn: Callable[[R], T]) -> T:
        """``fn(keyring)`` on ``member``, under the deadline; no failover."""
        if not self.opened:
            raise OperationFailed(NOT_OPEN, reason=Reason.NOT_OPEN)
        return self.attempt(member, op, lambda m: fn(m.keyring))

    def _routed(self, op: Operation, on_ring: Callable[[Member[R]], T]) -> T:
        policy = FailoverPolicy(op)
        last: HSMError | None = None
        while True:
            member = self._pick(policy.tried)
            if member is None:
                raise exhausted(policy, last)
            start = time.perf_counter()
            try:
                result = self.attempt(member, op, on_ring)
            except HSMError as err:
                policy = policy.increment(Attempt(member.name, outcome_of(err), err.reason,
                                                  (time.perf_counter() - start) * 1000))
                if policy.decide(err) is Decision.RAISE:
                    raise
                last = err
                self.metrics.failovers.labels(member.name).inc()
                continue
            for attempt in policy.history:
                if attempt.outcome is Outcome.INTEGRITY:
                    # Another member called good ciphertext bad: it is the faulty one.
                    self.health[attempt.member].failed(Reason.INTEGRITY_DISAGREEMENT)
            return result

    def _single_failed(self, err: HSMError) -> None:
        name = self.members[0].name
        self.metrics.errors.labels(name, err.kind.value).inc()
        if isinstance(err, PinError):
            self._disable(name, err)
        elif err.transient:
            self.health[name].failed(err.reason)

    def _disable(self, name: str, err: HSMError) -> None:
        """A refused PIN: the member is out of service for good (one log line)."""
        if self.health[name].state is State.DISABLED:
            return
        self.health[name].disabled(err.reason)
        log.error("member %s is out of service until the config is fixed and the process "
                  "restarted: %s", name, err.message,
                  extra={"hsm_event": "member_disabled", "member": name,
                         "reason": str(err.reason)})

    def _pick(self, tried: frozenset[str]) -> Member[R] | None:
        """The next member to try: healthy ones by mode, then down ones (last resort)."""
        healthy = [m for m in self.members
                   if m.name not in tried and self.health[m.name].state is State.HEALTHY]
        if healthy:
            if self.mode == "balanced":
                return min(healthy, key=lambda m: self.health[m.name].outstanding)
            return healthy[0]
        down = [m for m in self.members
                if m.name not in tried and self.health[m.name].state is State.DOWN]
        if down:
            return min(down, key=lambda m: self.health[m.name].next_probe)
        return None

    def attempt(self, member: Member[R], op: Operation, call: Callable[[Member[R]], T]) -> T:
        """One call on one member, under the deadline; health and metrics updated."""
        health = self.health[member.name]
        self._calls[(member.name, op)].inc()
        health.outstanding += 1
        start = time.perf_counter()
        outcome: Outcome = Outcome.OK
        reason: Reason | None = None
        try:
            executor = self._executors.get(member.name)
            if executor is None:
                return call(member)
            future = executor.submit(call, member)
            try:
                return future.result(timeout=self.deadline)
            except FutureTimeout:
                health.timed_out()
                future.add_done_callback(lambda f: self._late(member.name, f))
                raise HSMUnavailable(
                    f"{op.value} on member {member.name}: no answer within "
                    f"{self.deadline * 1000:.0f} ms", reason=Reason.DEADLINE,
                ) from None
        except HSMError as err:
            outcome, reason = outcome_of(err), err.reason
            self.last_error[member.name] = err.message
            self.metrics.errors.labels(member.name, err.kind.value).inc()
            if isinstance(err, PinError):
                self._disable(member.name, err)
            elif err.transient and err.reason is not Reason.DEADLINE:
                health.failed(err.reason)
            raise
        finally:
            health.outstanding -= 1
            elapsed = time.perf_counter() - start
            self._latency[member.name].observe(elapsed)
            if self.observer is not None:
                self.observer(CallRecord(member.name, op, outcome, reason,
                                         time.monotonic() - elapsed, elapsed * 1000))

    def serving(self) -> list[Member[R]]:
        """Healthy members in routing order."""
        return [m for m in self.members if self.health[m.name].state is State.HEALTHY]

    def _changed(self, change: Transition) -> None:
        self.transitions.append(change)
        self.metrics.state.labels(change.member).set(STATE_VALUES[change.new])
        log.info("member %s: %s -> %s (%s)", change.member, change.old.value,
                 change.new.value, change.reason,
                 extra={"hsm_event": "member_state", "member": change.member,
                        "old": change.old.value, "new": change.new.value,
                        "reason": str(change.reason)})


def _error_of(future: Future[Any]) -> Reason | None:
    """Why a call that outlived its deadline failed in the end (None: it worked, or it
    failed for a reason that says nothing about the member's health)."""
    if future.cancelled():
        return Reason.CANCELLED
    exc = future.exception()
    if exc is None:
        return None
    if isinstance(exc, HSMError):
        return exc.reason if exc.transient else None
    return Reason.UNEXPECTED
