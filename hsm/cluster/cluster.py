"""A cluster of HSM members: routing, deadlines, failover, key placement with a quorum,
re-admission and resync. Retries and failover live here and nowhere else.

Routing: ``failover`` mode sends each call to the first healthy member in config order;
``balanced`` to the healthy member with the fewest calls in flight. Members that are down
are tried last, as a last resort, so that no idempotent call fails while any member could
serve it; suspect members (a call to them outlived the deadline) get nothing new.

Deadline: with more than one member, each call runs in a thread of its member's executor
and the caller waits ``deadline_ms``; past that the member turns suspect and the call moves
on, while the late call finishes in the background. A one-member cluster calls inline (there
is nowhere to fail over to, and the hand-over would cost more than the call).

Keys: a key is generated on one member and copied to the others wrapped under the trusted
cluster wrapping key (``hsm cluster init``); it counts once ``quorum`` members hold it with
matching KCVs, else every copy is destroyed again. Members that missed it (down, failing)
get it when they are re-admitted: a background monitor probes down members, brings them up
to date from a healthy one (by listing both: the HSMs are the record), then re-admits them.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any, TypeVar

from hsm.cluster.health import Health, State, Transition
from hsm.cluster.member import MemberBackend
from hsm.cluster.metrics import STATE_VALUES, ClusterMetrics
from hsm.cluster.policy import (
    Attempt,
    Decision,
    FailoverPolicy,
    Operation,
    Outcome,
    exhausted,
    outcome_of,
)
from hsm.errors import (
    ClusterUnavailable,
    ConfigError,
    HSMError,
    HSMUnavailable,
    QuorumNotReached,
    Reason,
    ReplicationError,
)
from hsm.keys import DataKey, KeyInfo
from hsm.keys.blob import DIRECT, parse_fields

__all__ = ["CallRecord", "Cluster", "MemberReport", "VerifyReport"]

log = logging.getLogger(__name__)

T = TypeVar("T")
KeyRef = tuple[str, int]


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


@dataclass
class MemberReport:
    """One member in ``hsm cluster verify``."""

    name: str
    reachable: bool
    keys: int = 0
    missing: list[KeyRef] = field(default_factory=list)
    mismatched: list[KeyRef] = field(default_factory=list)
    error: str = ""


@dataclass
class VerifyReport:
    ok: bool
    keys: int
    members: list[MemberReport]

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "keys": self.keys,
            "members": [
                {"name": m.name, "reachable": m.reachable, "keys": m.keys,
                 "missing": [{"key_id": k, "version": v} for k, v in m.missing],
                 "mismatched": [{"key_id": k, "version": v} for k, v in m.mismatched],
                 "error": m.error}
                for m in self.members
            ],
        }


class Cluster:
    """The members of one config, served as one HSM. Thread-safe."""

    def __init__(self, members: Sequence[MemberBackend], *, mode: str = "failover",
                 quorum: int = 1, deadline_ms: int = 2000,
                 clock: Callable[[], float] = time.monotonic, probe_interval: float = 0.5,
                 max_probe_interval: float = 5.0,
                 monitor: bool = True, threaded: bool | None = None,
                 executor_workers: int = 16,
                 observer: Callable[[CallRecord], None] | None = None) -> None:
        if not members:
            raise ConfigError("a cluster needs at least one member")
        names = [m.name for m in members]
        if len(set(names)) != len(names):
            raise ConfigError("member names must be unique")
        if mode not in ("failover", "balanced"):
            raise ConfigError("mode must be 'failover' or 'balanced'")
        if not 1 <= quorum <= len(members):
            raise ConfigError("quorum must be between 1 and the number of members")
        self.members = list(members)
        self.mode = mode
        self.quorum = quorum
        self.deadline = deadline_ms / 1000.0
        self.clock = clock
        self.probe_interval = probe_interval
        self.metrics = ClusterMetrics(names, [op.value for op in Operation])
        self.health = {m.name: Health(m.name, clock=clock, probe_interval=probe_interval,
                                      max_probe_interval=max_probe_interval,
                                      on_change=self._changed) for m in members}
        self.pending: dict[str, set[KeyRef]] = {m.name: set() for m in members}
        self.pending_destroy: dict[str, set[KeyRef]] = {m.name: set() for m in members}
        self._threaded = len(members) > 1 if threaded is None else threaded
        self._executors: dict[str, ThreadPoolExecutor] = {}
        if self._threaded:
            self._executors = {
                m.name: ThreadPoolExecutor(executor_workers, thread_name_prefix=f"hsm-{m.name}")
                for m in members
            }
        self._lock = threading.Lock()  # pending sets only; never held around a member call
        self._calls = {(m.name, op): self.metrics.calls[(m.name, op.value)]
                       for m in members for op in Operation}
        # A cluster of one calls its member inline on the hot paths (nowhere to fail over).
        self._single: MemberBackend | None = members[0] if len(members) == 1 else None
        if self._single is not None:
            name = self._single.name
            self._count_gdk = self._calls[(name, Operation.GENERATE_DATA_KEY)].inc
            self._count_wrap = self._calls[(name, Operation.WRAP)].inc
            self._count_unwrap = self._calls[(name, Operation.UNWRAP)].inc
        self._latency = {m.name: self.metrics.latency.labels(m.name) for m in members}
        self._monitor_wanted = monitor and len(members) > 1
        self._stop = threading.Event()
        self._monitor: threading.Thread | None = None
        self._resync_lock = threading.Lock()
        self.transitions: list[Transition] = []
        # Called after every attempt on a member (drills record who served what, when).
        self.observer = observer

    # -- life cycle ------------------------------------------------------------------------

    def open(self) -> Cluster:
        """Open every member. A permanent error (wrong PIN, bad module path) raises; a
        member that is merely unreachable starts down and is probed later."""
        opened: list[MemberBackend] = []
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
        except BaseException:
            for member in opened:
                member.close()
            self._shutdown_executors()
            raise
        if self._monitor_wanted:
            self._monitor = threading.Thread(target=self._monitor_loop, name="hsm-monitor",
                                             daemon=True)
            self._monitor.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._monitor is not None:
            self._monitor.join(timeout=5)
            self._monitor = None
        self._shutdown_executors()
        for member in self.members:
            try:
                member.close()
            except HSMError as exc:
                log.warning("closing member %s: %s", member.name, exc)

    def _shutdown_executors(self) -> None:
        for executor in self._executors.values():
            executor.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> Cluster:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the calls applications make -------------------------------------------------------

    def generate_data_key(self, key_id: str, context: Any = None) -> DataKey:
        single = self._single
        if single is not None:
            self._count_gdk()
            try:
                return single.generate_data_key(key_id, context)
            except HSMError as err:
                self._single_failed(err)
                raise
        return self._run(Operation.GENERATE_DATA_KEY,
                         lambda m: m.generate_data_key(key_id, context))

    def wrap(self, key_id: str, plaintext: bytes | bytearray, context: Any = None) -> bytes:
        single = self._single
        if single is not None:
            self._count_wrap()
            try:
                return single.wrap(key_id, plaintext, context)
            except HSMError as err:
                self._single_failed(err)
                raise
        return self._run(Operation.WRAP, lambda m: m.wrap(key_id, plaintext, context))

    def unwrap(self, blob: bytes, context: Any = None) -> bytearray:
        single = self._single
        if single is not None:
            self._count_unwrap()
            try:
                return single.unwrap(blob, context)
            except HSMError as err:
                self._single_failed(err)
                raise
        parse_fields(blob)  # a malformed blob is refused here, not sent to every member
        return self._run(Operation.UNWRAP, lambda m: m.unwrap(blob, context))

    def encrypt_direct(self, key_id: str, plaintext: bytes | bytearray | memoryview,
                       context: Any = None) -> bytes:
        """1 to 4096 bytes encrypted under ``key_id`` inside an HSM (KMS Encrypt)."""
        return self._run(Operation.ENCRYPT_DIRECT,
                         lambda m: m.encrypt_direct(key_id, plaintext, context))

    def decrypt_direct(self, blob: bytes, context: Any = None) -> bytes:
        """Open a blob from :meth:`encrypt_direct`; like :meth:`unwrap`, a member's "does not
        verify" is checked on the others before it stands."""
        if len(self.members) > 1:
            parse_fields(blob, DIRECT)  # malformed: refused here, not "verified" on every member
        return self._run(Operation.DECRYPT_DIRECT, lambda m: m.decrypt_direct(blob, context))

    def generate_random(self, size: int) -> bytes:
        return self._run(Operation.RANDOM, lambda m: m.generate_random(size))

    def list_keys(self) -> list[KeyInfo]:
        return self._run(Operation.LIST_KEYS, lambda m: m.list_keys())

    def key_info(self, key_id: str, version: int | None = None) -> KeyInfo:
        return self._run(Operation.KEY_INFO, lambda m: m.key_info(key_id, version))

    # -- routing and failover --------------------------------------------------------------

    def _run(self, op: Operation, call: Callable[[MemberBackend], T]) -> T:
        if len(self.members) == 1:
            return self._only(op, call)
        policy = FailoverPolicy(op)
        last: HSMError | None = None
        while True:
            member = self._pick(policy.tried)
            if member is None:
                raise exhausted(policy, last)
            start = time.perf_counter()
            try:
                result = self._attempt(member, op, call)
            except HSMError as err:
                policy = policy.increment(Attempt(member.name, outcome_of(err), err.reason,
                                                  (time.perf_counter() - start) * 1000))
                decision = policy.decide(err)
                if decision is Decision.RAISE:
                    raise
                last = err
                self.metrics.failovers.labels(member.name).inc()
                continue
            if any(a.outcome is Outcome.INTEGRITY for a in policy.history):
                # Another member called good ciphertext bad: it is the faulty one.
                for attempt in policy.history:
                    if attempt.outcome is Outcome.INTEGRITY:
                        self.health[attempt.member].failed(Reason.INTEGRITY_DISAGREEMENT)
            return result

    def _only(self, op: Operation, call: Callable[[MemberBackend], T]) -> T:
        member = self.members[0]
        self._calls[(member.name, op)].inc()
        try:
            return call(member)
        except HSMError as err:
            self._single_failed(err)
            raise

    def _single_failed(self, err: HSMError) -> None:
        name = self.members[0].name
        self.metrics.errors.labels(name, err.kind.value).inc()
        if err.transient:
            self.health[name].failed(err.reason)

    def _pick(self, tried: frozenset[str]) -> MemberBackend | None:
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

    def _attempt(self, member: MemberBackend, op: Operation,
                 call: Callable[[MemberBackend], T]) -> T:
        """One call on one member, under the deadline; health and metrics updated."""
        health = self.health[member.name]
        self._calls[(member.name, op)].inc()
        health.outstanding += 1
        start = time.perf_counter()
        outcome: Outcome = Outcome.OK
        reason: Reason | None = None
        try:
            if not self._threaded:
                return call(member)
            future = self._executors[member.name].submit(call, member)
            try:
                return future.result(timeout=self.deadline)
            except FutureTimeout:
                health.timed_out()
                future.add_done_callback(lambda f: health.hung_call_returned(_error_of(f)))
                raise HSMUnavailable(
                    f"{op.value} on member {member.name}: no answer within "
                    f"{self.deadline * 1000:.0f} ms", reason=Reason.DEADLINE,
                ) from None
        except HSMError as err:
            outcome, reason = outcome_of(err), err.reason
            self.metrics.errors.labels(member.name, err.kind.value).inc()
            if err.transient and err.reason is not Reason.DEADLINE:
                health.failed(err.reason)
            raise
        finally:
            health.outstanding -= 1
            elapsed = time.perf_counter() - start
            self._latency[member.name].observe(elapsed)
            if self.observer is not None:
                self.observer(CallRecord(member.name, op, outcome, reason,
                                         time.monotonic() - elapsed, elapsed * 1000))

    def _changed(self, change: Transition) -> None:
        self.transitions.append(change)
        self.metrics.state.labels(change.member).set(STATE_VALUES[change.new])
        log.info("member %s: %s -> %s (%s)", change.member, change.old.value,
                 change.new.value, change.reason,
                 extra={"hsm_event": "member_state", "member": change.member,
                        "old": change.old.value, "new": change.new.value,
                        "reason": change.reason})

    # -- keys across members ---------------------------------------------------------------

    def serving(self) -> list[MemberBackend]:
        """Healthy members in routing order."""
        return [m for m in self.members if self.health[m.name].state is State.HEALTHY]

    def create_key(self) -> KeyInfo:
        """A new master key on ``quorum`` members at least, every copy with the same KCV.

        Generated on the first healthy member (never retried elsewhere), copied to the
        others under the trusted wrapping key. Too few copies or a KCV mismatch: every copy
        is destroyed and the error says why.
        """
        serving = self.serving()
        if len(serving) < self.quorum:
            raise QuorumNotReached(
                f"{len(serving)} member(s) healthy, quorum is {self.quorum}; no key created")
        key_id = str(uuid.uuid4())
        replicable = len(self.members) > 1
        primary = serving[0]
        info = self._attempt(primary, Operation.CREATE_KEY,
                             lambda m: m.create_key(key_id, 1, replicable))
        copies: dict[str, KeyInfo] = {primary.name: info}
        problems: dict[str, str] = {}
        if replicable:
            try:
                blob = self._attempt(primary, Operation.EXPORT_KEY,
                                     lambda m: m.export_key(key_id, 1))
            except HSMError as exc:
                self._rollback(key_id, copies)
                raise QuorumNotReached(
                    f"key {key_id} could not be exported from {primary.name} for "
                    f"replication ({exc}); rolled back") from exc
            for member in self.members:
                if member is primary:
                    continue
                if self.health[member.name].state is not State.HEALTHY:
                    problems[member.name] = self.health[member.name].state.value
                    continue
                try:
                    got = self._attempt(member, Operation.IMPORT_KEY,
                                        lambda m: m.import_key(key_id, 1, blob,
                                                               expected_kcv=info.kcv))
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
            for member in self.members:
                if member.name not in copies:
                    self.pending[member.name].add((key_id, 1))
        log.info("created master key %s on %s (kcv %s)", key_id, ", ".join(copies), info.kcv)
        return info

    def _rollback(self, key_id: str, copies: dict[str, KeyInfo]) -> None:
        by_name = {m.name: m for m in self.members}
        for name in copies:
            try:
                self._attempt(by_name[name], Operation.DESTROY_KEY,
                              lambda m: m.destroy_key(key_id, 1))
            except HSMError as exc:
                log.error("rollback: key %s could not be destroyed on %s (%s); "
                          "destroy it by hand", key_id, name, exc)

    def destroy_key(self, key_id: str, version: int) -> None:
        """Destroy a key version on every member; members that are down do it on return."""
        for member in self.members:
            if self.health[member.name].state is not State.HEALTHY:
                with self._lock:
                    self.pending_destroy[member.name].add((key_id, version))
                continue
            self._attempt(member, Operation.DESTROY_KEY,
                          lambda m: m.destroy_key(key_id, version))
        with self._lock:
            for keys in self.pending.values():
                keys.discard((key_id, version))

    # -- re-admission ----------------------------------------------------------------------

    def _monitor_loop(self) -> None:
        while not self._stop.wait(min(self.probe_interval / 2, 0.25)):
            try:
                self.check_members()
            except Exception:  # the monitor must survive anything; the log says what
                log.exception("member monitor")

    def check_members(self) -> None:
        """Probe every member whose probe is due; bring it up to date and re-admit it.
        Runs in the monitor thread; tests with a fake clock call it directly."""
        for member in self.members:
            health = self.health[member.name]
            if not health.probe_due():
                continue
            try:
                self._attempt(member, Operation.PING, lambda m: m.ping())
                self.resync(member)
            except HSMError as exc:
                health.probe_failed(exc.reason)
                log.info("member %s still down (%s)", member.name, exc.reason)
                continue
            health.readmitted()
            self.metrics.readmissions.labels(member.name).inc()

    def resync(self, member: MemberBackend) -> list[KeyRef]:
        """Copy to ``member`` every key a healthy member holds and it lacks (the HSMs are
        the record), apply destroys it missed. Returns the keys copied."""
        with self._resync_lock:
            sources = [m for m in self.serving() if m is not member]
            copied: list[KeyRef] = []
            if sources:
                source = sources[0]
                have = {(k.key_id, k.version): k for k in
                        self._attempt(member, Operation.LIST_KEYS, lambda m: m.list_keys())}
                want = {(k.key_id, k.version): k for k in
                        self._attempt(source, Operation.LIST_KEYS, lambda m: m.list_keys())}
                for ref, info in sorted(want.items()):
                    if ref in self.pending_destroy[member.name]:
                        continue
                    if ref in have:
                        if have[ref].kcv != info.kcv:
                            raise ReplicationError(
                                f"member {member.name} holds key {ref[0]} v{ref[1]} with "
                                f"KCV {have[ref].kcv}, {source.name} with {info.kcv}")
                        continue
                    blob = self._attempt(source, Operation.EXPORT_KEY,
                                         functools.partial(_export, ref=ref))
                    try:
                        self._attempt(member, Operation.IMPORT_KEY,
                                      functools.partial(_import, ref=ref, blob=blob,
                                                        kcv=info.kcv))
                    except HSMError as exc:
                        if exc.reason is Reason.KCV_MISMATCH:
                            raise ReplicationError(
                                f"copy of key {ref[0]} v{ref[1]} on {member.name} would have "
                                f"another KCV than {info.kcv}") from exc
                        raise
                    copied.append(ref)
            for ref in sorted(self.pending_destroy[member.name]):
                try:
                    self._attempt(member, Operation.DESTROY_KEY,
                                  functools.partial(_destroy, ref=ref))
                except HSMError as exc:
                    if exc.reason is not Reason.KEY_NOT_FOUND:
                        raise
            with self._lock:
                self.pending[member.name].clear()
                self.pending_destroy[member.name].clear()
            if copied:
                log.info("member %s brought up to date: %d key(s) copied", member.name,
                         len(copied))
            return copied

    # -- verification and status -----------------------------------------------------------

    def verify(self) -> VerifyReport:
        """Every key and version on every member, with matching KCVs; drift by member."""
        listings: dict[str, dict[KeyRef, str]] = {}
        reports: list[MemberReport] = []
        for member in self.members:
            try:
                member.ping()
                keys = self._attempt(member, Operation.LIST_KEYS, lambda m: m.list_keys())
            except HSMError as exc:
                reports.append(MemberReport(member.name, False, error=str(exc)))
                continue
            listings[member.name] = {(k.key_id, k.version): k.kcv for k in keys}
            reports.append(MemberReport(member.name, True, keys=len(keys)))
        union: dict[KeyRef, set[str]] = {}
        for listing in listings.values():
            for ref, kcv in listing.items():
                union.setdefault(ref, set()).add(kcv)
        for report in reports:
            if not report.reachable:
                continue
            listing = listings[report.name]
            report.missing = sorted(ref for ref in union if ref not in listing)
            report.mismatched = sorted(ref for ref in listing if len(union[ref]) > 1)
        ok = all(r.reachable and not r.missing and not r.mismatched for r in reports)
        return VerifyReport(ok, len(union), reports)

    def state_of(self, name: str) -> State:
        return self.health[name].state

    def describe(self, member: MemberBackend) -> dict[str, Any]:
        """``member.describe()`` under the deadline (a hung member must not hang status)."""
        if not self._threaded:
            return member.describe()
        future = self._executors[member.name].submit(member.describe)
        try:
            return future.result(timeout=self.deadline)
        except FutureTimeout:
            return {"error": f"no answer within {self.deadline * 1000:.0f} ms"}

    def counters(self, name: str) -> dict[str, int]:
        """Calls, errors, failovers and re-admissions of one member, from the metrics."""
        totals = {"calls": sum(c.value() for (m, _), c in self.metrics.calls.items()
                               if m == name),
                  "errors": 0, "failovers": 0, "readmissions": 0}
        for family, key in ((self.metrics.errors, "errors"),
                            (self.metrics.failovers, "failovers"),
                            (self.metrics.readmissions, "readmissions")):
            for metric in family.collect():
                for sample in metric.samples:
                    if sample.name.endswith("_total") and sample.labels.get("member") == name:
                        totals[key] += int(sample.value)
        return totals


def _export(member: MemberBackend, *, ref: KeyRef) -> bytes:
    return member.export_key(*ref)


def _import(member: MemberBackend, *, ref: KeyRef, blob: bytes, kcv: str) -> KeyInfo:
    return member.import_key(ref[0], ref[1], blob, expected_kcv=kcv)


def _destroy(member: MemberBackend, *, ref: KeyRef) -> None:
    member.destroy_key(*ref)


def _error_of(future: Future[Any]) -> Reason | None:
    if future.cancelled():
        return Reason.CANCELLED
    exc = future.exception()
    if exc is None:
        return None
    if isinstance(exc, HSMError):
        return exc.reason if exc.transient else None
    return Reason.UNEXPECTED
