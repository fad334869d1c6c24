"""Failover drills: mixed traffic against a SoftHSM cluster while faults come and go, then
proof that nothing was lost.

A drill stands up its own harness cluster (or uses a harness config), runs the cluster
ceremony, creates master keys, and then, for ``duration`` seconds, ``threads`` threads
generate data keys, unwrap earlier ones and wrap/unwrap key material, checking every result,
while a schedule injects faults (``3s:hsm-b=device-error,8s:hsm-b=heal,...``). After the
schedule every member is healed and re-admitted, and every data key generated during the
drill is unwrapped on every member, one by one, and compared byte for byte.

A fault is applied only while another member serves (healthy, no fault of the schedule on
it) and its own member, if healed, is back: a member healed a moment ago may still be
coming back (a lost token is re-initialized by the member's probe, seconds later), so the
fault waits, its heal moves as much later (every fault lasts as planned), and the report
says how long (``postponed_ms``), or that the moment never came before the end
(``skipped``). Schedules that fault every
member at once are refused before any traffic (:func:`check_schedule`).

Fault kinds and schedules: :mod:`hsm.testing.drill_schedule`; the report and its plot:
:mod:`hsm.testing.drill_report` (both re-exported here).
"""

from __future__ import annotations

import os
import random
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from hsm.client import Client
from hsm.cluster import CallRecord, HSMMember, Operation, Outcome, State
from hsm.cluster.ceremony import init_cluster
from hsm.config import load_config
from hsm.errors import HSMError, InvalidInput
from hsm.testing.drill_report import DrillReport, plot
from hsm.testing.drill_schedule import (
    ERROR_FAULTS,
    MOMENTARY,
    DrillEvent,
    check_schedule,
    default_schedule,
    parse_schedule,
)
from hsm.testing.faults import FaultInjector, finalize_under
from hsm.testing.harness import harness_down, harness_up, load_harness
from hsm.testing.layout import Harness

__all__ = ["DrillEvent", "DrillReport", "check_schedule", "default_schedule",
           "parse_schedule", "plot", "run_drill"]

WINDOW = 2.0  # seconds after a fault whose latency the report shows apart
READMIT_TIMEOUT = 60.0  # seconds the final check waits for every member to be back
SETTLE_TIMEOUT = 10.0  # seconds the final check waits for a member to answer after a fault
_MAX_ERRORS = 100  # error messages kept (the count of failures is in `failed`)


@dataclass
class _Record:
    at: float  # seconds since start
    ms: float
    ok: bool
    op: str


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@contextmanager
def _harness(config: str | os.PathLike[str] | None, members: int) -> Iterator[Harness]:
    if config is not None:
        yield load_harness(Path(config).resolve().parent)
        return
    with tempfile.TemporaryDirectory(prefix="hsm-drill-") as tmp:
        harness = harness_up(Path(tmp) / "cluster", members, faults=True)
        try:
            yield harness
        finally:
            harness_down(harness.directory)


def run_drill(*, config: str | os.PathLike[str] | None = None, members: int = 3,
              duration: float = 20.0, threads: int = 4, schedule: str | None = None,
              seed: int = 0, mode: str = "balanced",
              deadline_ms: int = 250) -> DrillReport:
    """Run a drill; see the module docstring. Raises HSMError only for setup problems."""
    if duration <= 0 or threads < 1:
        raise InvalidInput("duration must be positive and threads at least 1")
    with _harness(config, members) as harness:
        names = [m.name for m in harness.members]
        events = (parse_schedule(schedule, names) if schedule
                  else default_schedule(names, duration))
        check_schedule(events, names)
        _check_faults_available(harness, events)
        cfg = load_config(harness.config_path)
        # Balanced by default, so that every member carries traffic when its fault comes;
        # a short deadline, so that a hang in a drill of seconds outlives it.
        cfg = replace(cfg, cluster=replace(cfg.cluster, mode=mode, deadline_ms=deadline_ms))
        init_cluster(cfg)
        injector = FaultInjector(harness)
        injector.heal_all()
        report = DrillReport(names, duration, threads, [str(e) for e in events])
        calls: list[CallRecord] = []
        client = Client(cfg)
        client.cluster.observer = calls.append
        with client:
            for member in client.members:
                _fast_recovery(member)
            _run(client, injector, events, report, calls, duration, threads, seed)
        return report


def _check_faults_available(harness: Harness, events: list[DrillEvent]) -> None:
    """Refuse, before any traffic, a shim fault on a member that loads SoftHSM directly."""
    for event in events:
        if (event.action in ERROR_FAULTS or event.action == "hang") \
                and not harness.member(event.member).faults:
            raise InvalidInput(
                f"schedule item {event}: {event.member} has no fault-injection shim (harness "
                f"built without it); only lose-token, finalize and heal work there")


def _fast_recovery(member: HSMMember) -> None:
    """Drills heal in seconds: let a member's module re-initialize as soon as it is asked
    (the default allows one re-initialize per 5 s)."""
    if member.module is not None:
        member.module.reinit_interval = 0.0


def _run(client: Client, injector: FaultInjector, events: list[DrillEvent],
         report: DrillReport, calls: list[CallRecord], duration: float, threads: int,
         seed: int) -> None:
    keys = [client.create_key().key_id for _ in range(2)]
    records: list[_Record] = []
    generated: list[tuple[bytes, bytes, dict[str, str]]] = []  # blob, plaintext, context
    lock = threading.Lock()
    start = time.monotonic()
    stop = start + duration
    stopping = threading.Event()  # set early if the schedule itself fails

    def failed(message: str) -> None:
        with lock:
            if len(report.errors) < _MAX_ERRORS:
                report.errors.append(message)

    def worker(n: int) -> None:
        rng = random.Random(seed * 1000 + n)  # noqa: S311 - chooses operations, not keys
        while not stopping.is_set() and time.monotonic() < stop:
            key = rng.choice(keys)
            ctx = {"drill": str(n)}
            t0 = time.monotonic()
            op = rng.random()
            ok = True
            name = "generate"
            try:
                if op < 0.4 or not generated:
                    dk = client.generate_data_key(key, ctx)
                    with lock:
                        generated.append((dk.wrapped, bytes(dk.plaintext), ctx))
                elif op < 0.8:
                    name = "unwrap"
                    with lock:
                        blob, plaintext, old_ctx = rng.choice(generated)
                    got = client.unwrap(blob, old_ctx)
                    if bytes(got) != plaintext:
                        with lock:
                            report.mismatched += 1
                else:
                    name = "wrap"
                    material = os.urandom(32)
                    blob = client.wrap(key, material, ctx)
                    if bytes(client.unwrap(blob, ctx)) != material:
                        with lock:
                            report.mismatched += 1
            except HSMError as exc:
                ok = False
                failed(f"{name}: {type(exc).__name__}: {exc}")
            t1 = time.monotonic()
            with lock:
                records.append(_Record(t0 - start, (t1 - t0) * 1000, ok, name))

    workers = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads)]
    applied: list[tuple[DrillEvent, float]] = []
    try:
        for t in workers:
            t.start()
        _follow(client, injector, events, report, applied, start, stop)
    finally:
        stopping.set()  # whatever happened: no worker outlives this block
        for t in workers:
            t.join()
    healed_at = time.monotonic()
    for name in report.members:
        _apply(client, injector, DrillEvent(0, name, "heal"))
    _wait_readmitted(client, report, applied, start, healed_at)
    _summarize(report, records, calls, applied, start, client)
    _check_everything(client, report, generated)


def _follow(client: Client, injector: FaultInjector, events: list[DrillEvent],
            report: DrillReport, applied: list[tuple[DrillEvent, float]], start: float,
            stop: float) -> None:
    """Apply the schedule until ``stop``. A fault waits until another member serves (and
    its own member is back); its heal then moves as late, so that it lasts as planned."""
    faulted: set[str] = set()
    heal_after: dict[str, float] = {}  # member -> the earliest time its postponed heal comes
    for n, event in enumerate(events):
        due = start + event.at
        if event.action == "heal":
            due = max(due, heal_after.pop(event.member, due))
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        if time.monotonic() >= stop:
            break  # what is left is healed next, at the end
        if event.action != "heal":
            if not _ready_for(client, event.member, faulted, stop):
                report.skipped.append(f"{event}: {event.member} or another member was not "
                                      "back before the end")
                continue
            waited = time.monotonic() - due
            if waited >= 0.05:
                report.postponed[len(applied)] = round(waited * 1000, 1)
                heal = next((e for e in events[n + 1:]
                             if e.member == event.member and e.action == "heal"), None)
                if heal is not None:
                    heal_after[event.member] = time.monotonic() + heal.at - event.at
        applied.append((event, time.monotonic() - start))
        _apply(client, injector, event)
        if event.action == "heal":
            faulted.discard(event.member)
        elif event.action not in MOMENTARY:
            faulted.add(event.member)


def _ready_for(client: Client, member: str, faulted: set[str], until: float) -> bool:
    """Wait until a fault on ``member`` can come: another member with no fault on it is
    healthy, and ``member`` itself, if healed, is back (not down or suspect: a fault on a
    member still being probed back tests nothing the schedule says). False if ``until``
    came first."""
    cluster = client.cluster
    others = [m.name for m in client.members if m.name != member and m.name not in faulted]
    while True:
        itself = member in faulted or cluster.state_of(member) not in (State.DOWN,
                                                                       State.SUSPECT)
        if itself and any(cluster.state_of(name) is State.HEALTHY for name in others):
            return True
        if time.monotonic() >= until:
            return False
        time.sleep(0.02)


def _apply(client: Client, injector: FaultInjector, event: DrillEvent) -> None:
    if event.action in ERROR_FAULTS:
        injector.inject(event.member, ERROR_FAULTS[event.action])
    elif event.action == "hang":
        injector.hang(event.member)
    elif event.action == "lose-token":
        injector.lose_token(event.member)
    elif event.action == "finalize":
        member = next(m for m in client.members if m.name == event.member)
        if member.module is not None:
            finalize_under(member.module)
    else:
        injector.heal(event.member)


def _wait_readmitted(client: Client, report: DrillReport,
                     applied: list[tuple[DrillEvent, float]], start: float,
                     healed_at: float) -> None:
    cluster = client.cluster
    deadline = time.monotonic() + READMIT_TIMEOUT
    while time.monotonic() < deadline:
        # Waiting only for members on their way back: any other state (a member disabled
        # by a refused PIN...) does not change by itself.
        if not any(cluster.state_of(n) in (State.DOWN, State.SUSPECT) for n in report.members):
            break
        time.sleep(0.05)
    heals: dict[str, list[float]] = {}
    for event, at in applied:
        if event.action == "heal" or event.action in MOMENTARY:  # no heal needed: from then
            heals.setdefault(event.member, []).append(start + at)
    for name in report.members:
        heals.setdefault(name, []).append(healed_at)
    for name in report.members:
        if not any(t.member == name for t in cluster.transitions):
            continue  # never left service
        back = [t.at for t in cluster.transitions
                if t.member == name and t.new is State.HEALTHY]
        times = []
        for heal_time in heals[name]:
            later = [b for b in back if b >= heal_time]
            if later:
                times.append((min(later) - heal_time) * 1000)
        report.readmit_ms[name] = round(max(times), 1) if times else None


def _summarize(report: DrillReport, records: list[_Record], calls: list[CallRecord],
               applied: list[tuple[DrillEvent, float]], start: float,
               client: Client) -> None:
    latencies = [r.ms for r in records]
    report.ops = len(records)
    report.failed = sum(1 for r in records if not r.ok)
    report.p50_ms = statistics.median(latencies) if latencies else 0.0
    report.p99_ms = _percentile(latencies, 0.99)
    report.max_ms = max(latencies, default=0.0)
    report.failovers = sum(client.cluster.counters(n)["failovers"] for n in report.members)
    report.timeline = [(r.at, r.ms, r.ok) for r in records]
    times = [at for _, at in applied] + [float("inf")]
    for i, (event, at) in enumerate(applied):
        if event.action == "heal":
            continue
        postponed = report.postponed.get(i, 0.0)
        end = min(at + WINDOW, times[i + 1])  # up to the next event: windows don't overlap
        # Calls running at the fault or started before the next event (or WINDOW s).
        window = [r.ms for r in records if r.at + r.ms / 1000 >= at and r.at < end]
        served = sorted(c.started - start for c in calls
                        if c.outcome is Outcome.OK and c.member != event.member
                        and c.started - start >= at)
        report.faults.append({
            "at_s": round(at, 3), "member": event.member, "fault": event.action,
            "ops_in_window": len(window),
            "p50_ms": round(statistics.median(window), 3) if window else None,
            "p99_ms": round(_percentile(window, 0.99), 3) if window else None,
            "max_ms": round(max(window), 3) if window else None,
            "first_success_elsewhere_ms": round((served[0] - at) * 1000, 3) if served else None,
            "postponed_ms": postponed,
        })


def _settle(client: Client, member: HSMMember,
            sample: tuple[bytes, bytes, dict[str, str]] | None) -> bool:
    """Until ``member`` unwraps ``sample`` (a data key of the drill; without one: answers a
    ping), for SETTLE_TIMEOUT s at most. Through the cluster, so that a failure takes the
    member out of service and its probe repairs it: the first calls after a fault may only
    start its recovery, and a member may answer pings before its keys (a token restored)."""
    end = time.monotonic() + SETTLE_TIMEOUT

    def answer() -> object:
        if sample is None:
            member.ping()
            return None
        blob, _, ctx = sample
        return client.cluster.call_on(member, Operation.UNWRAP,
                                      lambda ring: ring.unwrap(blob, ctx))

    while True:
        try:
            answer()
            return True
        except HSMError:
            if time.monotonic() >= end:
                return False
            time.sleep(0.1)


def _check_everything(client: Client, report: DrillReport,
                      generated: list[tuple[bytes, bytes, dict[str, str]]]) -> None:
    """Every data key of the drill, unwrapped on every member, gives the same bytes; every
    key has one KCV on every member. A member that is not back (not re-admitted, or not
    answering) is reported as such, apart from members whose keys disagree."""
    for member in client.members:
        state = client.cluster.state_of(member.name)
        if state in (State.DOWN, State.SUSPECT):
            report.not_back[member.name] = (f"{state.value}: not re-admitted "
                                            f"{READMIT_TIMEOUT:g} s after the last heal")
        elif state is not State.HEALTHY:
            report.not_back[member.name] = state.value
        if not _settle(client, member, generated[0] if generated else None):
            report.not_back.setdefault(member.name, "unreachable")
            report.errors.append(f"final check: {member.name} unreachable")
            report.unverified += len(generated)
            continue
        recoveries = 0
        for blob, plaintext, ctx in generated:
            for _ in range(2):  # once more after a recovery
                try:
                    got = member.keyring.unwrap(blob, ctx)
                except HSMError as exc:
                    if exc.transient and recoveries < 3 and _settle(client, member,
                                                                    (blob, plaintext, ctx)):
                        recoveries += 1
                        continue
                    report.unverified += 1
                    if len(report.errors) < _MAX_ERRORS:
                        report.errors.append(f"final check on {member.name}: {exc}")
                    break
                if bytes(got) != plaintext:
                    report.mismatched += 1
                break
    report.data_keys_checked = len(generated)
    verified = client.verify()
    report.kcv_agreement = verified.ok
    for found in verified.members:
        if not found.reachable:
            report.not_back.setdefault(found.name, "unreachable")
        elif found.missing or found.mismatched:
            report.kcv_disagree[found.name] = ", ".join(
                part for part in (f"{len(found.missing)} missing" if found.missing else "",
                                  f"{len(found.mismatched)} with another KCV"
                                  if found.mismatched else "") if part)
