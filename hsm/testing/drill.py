"""Failover drills: mixed traffic against a SoftHSM cluster while faults come and go, then
proof that nothing was lost.

A drill stands up its own harness cluster (or uses a harness config), runs the cluster
ceremony, creates master keys, and then, for ``duration`` seconds, ``threads`` threads
generate data keys, unwrap earlier ones and wrap/unwrap key material, checking every result,
while a schedule injects faults (``3s:hsm-b=device-error,8s:hsm-b=heal,...``). After the
schedule every member is healed and re-admitted, and every data key generated during the
drill is unwrapped on every member, one by one, and compared byte for byte.

Fault kinds: ``device-error``, ``device-removed``, ``token-not-present``,
``session-handle-invalid``, ``function-failed``, ``hang``, ``lose-token``, ``finalize``
(the module finalized under the client), ``heal``.
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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import hsm
from hsm.cluster import CallRecord, HSMMember, Outcome, State
from hsm.errors import HSMError, InvalidInput
from hsm.testing.faults import FaultInjector
from hsm.testing.softhsm import Harness, harness_down, harness_up, load_harness

__all__ = ["DrillEvent", "DrillReport", "default_schedule", "parse_schedule", "run_drill"]

ERROR_FAULTS = {
    "device-error": "DEVICE_ERROR",
    "device-removed": "DEVICE_REMOVED",
    "token-not-present": "TOKEN_NOT_PRESENT",
    "session-handle-invalid": "SESSION_HANDLE_INVALID",
    "function-failed": "FUNCTION_FAILED",
}
ACTIONS = (*ERROR_FAULTS, "hang", "lose-token", "finalize", "heal")
WINDOW = 2.0  # seconds after a fault whose latency the report shows apart


@dataclass(frozen=True)
class DrillEvent:
    at: float  # seconds from the start
    member: str
    action: str

    def __str__(self) -> str:
        return f"{self.at:g}s:{self.member}={self.action}"


def parse_schedule(spec: str, members: list[str]) -> list[DrillEvent]:
    """``"3s:hsm-b=device-error,8s:hsm-b=heal"`` -> events; InvalidInput on a bad item."""
    events = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        when, sep, rest = item.partition(":")
        member, sep2, action = rest.partition("=")
        try:
            at = float(when.removesuffix("s"))
        except ValueError:
            at = -1.0
        if not sep or not sep2 or at < 0:
            raise InvalidInput(f"schedule item {item!r} is not TIME:MEMBER=ACTION (e.g. "
                               "3s:hsm-b=device-error)")
        if member not in members:
            raise InvalidInput(f"schedule item {item!r}: no member {member!r} "
                               f"(members: {', '.join(members)})")
        if action not in ACTIONS:
            raise InvalidInput(f"schedule item {item!r}: unknown action {action!r} "
                               f"(one of {', '.join(ACTIONS)})")
        events.append(DrillEvent(at, member, action))
    return sorted(events, key=lambda e: e.at)


def default_schedule(members: list[str], duration: float) -> list[DrillEvent]:
    """Every fault kind, each healed, the primary lost last; spread over ``duration``."""
    first = members[0]
    others = members[1:] or members
    plan = [(first if len(members) == 1 else others[0], "device-error"),
            (others[-1], "hang"),
            (others[0], "session-handle-invalid"),
            (others[-1], "function-failed"),
            (first, "lose-token"),
            (others[0], "finalize")]
    step = duration / (len(plan) * 2 + 1)
    events = []
    for i, (member, action) in enumerate(plan):
        events.append(DrillEvent(round(step * (2 * i + 1), 2), member, action))
        events.append(DrillEvent(round(step * (2 * i + 2), 2), member, "heal"))
    return events


@dataclass
class _Record:
    at: float  # seconds since start
    ms: float
    ok: bool
    op: str


@dataclass
class DrillReport:
    """What the drill measured. ``passed`` is the verdict: no failure, no mismatch."""

    members: list[str]
    duration: float
    threads: int
    schedule: list[str]
    ops: int = 0
    failed: int = 0
    mismatched: int = 0
    failovers: int = 0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    data_keys_checked: int = 0
    unverified: int = 0
    kcv_agreement: bool = False
    faults: list[dict[str, Any]] = field(default_factory=list)
    readmit_ms: dict[str, float | None] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    timeline: list[tuple[float, float, bool]] = field(default_factory=list, repr=False)

    @property
    def passed(self) -> bool:
        return (self.failed == 0 and self.mismatched == 0 and self.unverified == 0
                and self.kcv_agreement)

    def as_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed, "ops": self.ops, "failed": self.failed,
            "mismatched": self.mismatched, "failovers": self.failovers,
            "p50_ms": round(self.p50_ms, 3), "p99_ms": round(self.p99_ms, 3),
            "max_ms": round(self.max_ms, 3), "data_keys_checked": self.data_keys_checked,
            "unverified": self.unverified,
            "kcv_agreement": self.kcv_agreement, "members": self.members,
            "duration_s": self.duration, "threads": self.threads, "schedule": self.schedule,
            "faults": self.faults, "readmit_ms": self.readmit_ms, "errors": self.errors[:20],
        }


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
        harness = harness_up(Path(tmp) / "cluster", members)
        try:
            yield harness
        finally:
            harness_down(harness.directory)


def run_drill(*, config: str | os.PathLike[str] | None = None, members: int = 3,
              duration: float = 20.0, threads: int = 4, schedule: str | None = None,
              seed: int = 0, mode: str = "balanced",
              deadline_ms: int = 250) -> DrillReport:
    """Run a drill; see the module docstring. Raises HSMError only for setup problems."""
    from hsm.cluster.ceremony import init_cluster

    if duration <= 0 or threads < 1:
        raise InvalidInput("duration must be positive and threads at least 1")
    with _harness(config, members) as harness:
        names = [m.name for m in harness.members]
        events = (parse_schedule(schedule, names) if schedule
                  else default_schedule(names, duration))
        cfg = hsm.load_config(harness.config_path)
        # Balanced by default, so that every member carries traffic when its fault comes;
        # a short deadline, so that a hang in a drill of seconds outlives it.
        cfg = replace(cfg, cluster=replace(cfg.cluster, mode=mode, deadline_ms=deadline_ms))
        init_cluster(cfg)
        injector = FaultInjector(harness)
        for name in names:
            injector.heal(name)
        report = DrillReport(names, duration, threads, [str(e) for e in events])
        calls: list[CallRecord] = []
        client = hsm.Client(cfg)
        client.cluster.observer = calls.append
        with client:
            for member in client.members:
                _fast_recovery(member)
            _run(client, injector, events, report, calls, duration, threads, seed)
        return report


def _fast_recovery(member: HSMMember) -> None:
    """Drills heal in seconds: let a member's module re-initialize as soon as it is asked
    (the default allows one re-initialize per 5 s)."""
    if member.module is not None:
        member.module.reinit_interval = 0.0


def _run(client: hsm.Client, injector: FaultInjector, events: list[DrillEvent],
         report: DrillReport, calls: list[CallRecord], duration: float, threads: int,
         seed: int) -> None:
    keys = [client.create_key().key_id for _ in range(2)]
    records: list[_Record] = []
    generated: list[tuple[bytes, bytes, dict[str, str]]] = []  # blob, plaintext, context
    lock = threading.Lock()
    start = time.monotonic()
    stop = start + duration

    def worker(n: int) -> None:
        rng = random.Random(seed * 1000 + n)  # noqa: S311 - chooses operations, not keys
        while time.monotonic() < stop:
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
                with lock:
                    report.errors.append(f"{name}: {type(exc).__name__}: {exc}")
            t1 = time.monotonic()
            with lock:
                records.append(_Record(t0 - start, (t1 - t0) * 1000, ok, name))

    workers = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads)]
    for t in workers:
        t.start()
    applied: list[tuple[DrillEvent, float]] = []
    for event in events:
        delay = start + event.at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        if time.monotonic() >= stop:
            break
        applied.append((event, time.monotonic() - start))
        _apply(client, injector, event)
    for t in workers:
        t.join()
    healed_at = time.monotonic()
    for name in report.members:
        _apply(client, injector, DrillEvent(0, name, "heal"))
    _wait_readmitted(client, report, applied, start, healed_at)
    _summarize(report, records, calls, applied, start, client)
    _check_everything(client, report, generated)


def _apply(client: hsm.Client, injector: FaultInjector, event: DrillEvent) -> None:
    if event.action in ERROR_FAULTS:
        injector.inject(event.member, ERROR_FAULTS[event.action])
    elif event.action == "hang":
        injector.hang(event.member)
    elif event.action == "lose-token":
        injector.lose_token(event.member)
    elif event.action == "finalize":
        member = next(m for m in client.members if m.name == event.member)
        if member.module is not None:
            member.module.finalize_behind_our_back()
    else:
        injector.heal(event.member)


def _wait_readmitted(client: hsm.Client, report: DrillReport,
                     applied: list[tuple[DrillEvent, float]], start: float,
                     healed_at: float, timeout: float = 60.0) -> None:
    cluster = client.cluster
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(cluster.state_of(n) is State.HEALTHY for n in report.members):
            break
        time.sleep(0.05)
    heals: dict[str, list[float]] = {}
    for event, at in applied:
        if event.action == "heal":
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
               client: hsm.Client) -> None:
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
        })


def _reachable(member: HSMMember, tries: int = 20) -> bool:
    """Ping until it answers: the first call after a fault may only trigger recovery."""
    for _ in range(tries):
        try:
            member.ping()
            return True
        except HSMError:
            time.sleep(0.1)
    return False


def _check_everything(client: hsm.Client, report: DrillReport,
                      generated: list[tuple[bytes, bytes, dict[str, str]]]) -> None:
    """Every data key of the drill, unwrapped on every member, gives the same bytes."""
    for member in client.members:
        if not _reachable(member):
            report.errors.append(f"final check: {member.name} unreachable")
            report.unverified += len(generated)
            continue
        for blob, plaintext, ctx in generated:
            try:
                got = member.unwrap(blob, ctx)
            except HSMError as exc:
                report.unverified += 1
                report.errors.append(f"final check on {member.name}: {exc}")
                continue
            if bytes(got) != plaintext:
                report.mismatched += 1
    report.data_keys_checked = len(generated)
    report.kcv_agreement = client.verify().ok


def plot(report: DrillReport, path: str | os.PathLike[str]) -> None:
    """Latency over time, failures in red, each fault and heal marked. Needs matplotlib
    (``pip install 'hsm[plot]'``)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InvalidInput("--plot needs matplotlib: pip install 'hsm[plot]'") from None
    fig, ax = plt.subplots(figsize=(11, 4.5))
    ok = [(t, ms) for t, ms, good in report.timeline if good]
    bad = [(t, ms) for t, ms, good in report.timeline if not good]
    if ok:
        ax.scatter([t for t, _ in ok], [ms for _, ms in ok], s=3, alpha=0.5, label="call")
    if bad:
        ax.scatter([t for t, _ in bad], [ms for _, ms in bad], s=12, color="red",
                   label="failed call")
    for item in report.schedule:
        at, _, rest = item.partition(":")
        seconds = float(at.removesuffix("s"))
        healed = rest.endswith("=heal")
        ax.axvline(seconds, color="green" if healed else "orange", linestyle="--", lw=1)
        ax.annotate(rest, (seconds, 1), xycoords=("data", "axes fraction"), rotation=90,
                    va="top", ha="right", fontsize=7)
    ax.set_yscale("log")
    ax.set_xlabel("seconds since start")
    ax.set_ylabel("latency (ms, log)")
    ax.set_title(f"hsm drill: {report.ops} ops, {report.failed} failed, "
                 f"{report.mismatched} mismatched, {report.failovers} failovers")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
