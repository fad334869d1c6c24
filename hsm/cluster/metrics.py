"""Prometheus metrics for one cluster, in a registry of its own (several clients in one
process don't collide). Serve them with ``prometheus_client.start_http_server(port,
registry=client.metrics.registry)`` or ``generate_latest(registry)``."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from hsm.cluster.health import State

__all__ = ["STATE_VALUES", "CallCounter", "ClusterMetrics"]

STATE_VALUES = {State.HEALTHY: 0, State.SUSPECT: 1, State.DOWN: 2, State.DISABLED: 3}


class CallCounter:
    """A counter for every call's hot path: ``inc()`` is one C call (``next`` on an
    ``itertools.count`` is atomic under the GIL), no lock. Reading costs one increment,
    which is subtracted: ``value()`` is exact."""

    __slots__ = ("_count", "_lock", "_reads", "inc")

    def __init__(self) -> None:
        self._count = itertools.count()
        self._reads = 0
        self._lock = threading.Lock()
        self.inc = self._count.__next__

    def value(self) -> int:
        with self._lock:
            value = next(self._count) - self._reads
            self._reads += 1
            return value


class _CallCollector(Collector):
    def __init__(self, counters: dict[tuple[str, str], CallCounter]) -> None:
        self._counters = counters

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily("hsm_member_calls", "Calls sent to a member",
                                     labels=["member", "operation"])
        for (member, operation), counter in sorted(self._counters.items()):
            family.add_metric([member, operation], counter.value())
        yield family


class ClusterMetrics:
    """Per member: calls, errors by kind, latency, state, failovers, re-admissions."""

    def __init__(self, members: list[str], operations: Iterable[str]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.calls = {(m, op): CallCounter() for m in members for op in operations}
        r.register(_CallCollector(self.calls))
        self.errors = Counter("hsm_member_errors", "Calls that failed on a member, by kind",
                              ["member", "kind"], registry=r)
        self.latency = Histogram("hsm_member_latency_seconds", "Latency of calls to a member",
                                 ["member"], registry=r,
                                 buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25,
                                          .5, 1, 2.5, 5))
        self.state = Gauge("hsm_member_state", "0 healthy, 1 suspect, 2 down, 3 disabled",
                           ["member"], registry=r)
        self.failovers = Counter("hsm_member_failovers",
                                 "Calls that left this member for another", ["member"],
                                 registry=r)
        self.readmissions = Counter("hsm_member_readmissions",
                                    "Times a member came back into service", ["member"],
                                    registry=r)
        for name in members:
            self.state.labels(name).set(0)
            self.failovers.labels(name)
            self.readmissions.labels(name)
