"""Prometheus metrics for one cluster, in a registry of its own (several clients in one
process don't collide). Serve them with ``prometheus_client.start_http_server(port,
registry=client.metrics.registry)`` or ``generate_latest(registry)``."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from hsm.cluster.health import State

__all__ = ["STATE_VALUES", "ClusterMetrics"]

STATE_VALUES = {State.HEALTHY: 0, State.SUSPECT: 1, State.DOWN: 2}


class ClusterMetrics:
    """Per member: calls, errors by kind, latency, state, failovers, re-admissions."""

    def __init__(self, members: list[str]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.calls = Counter("hsm_member_calls", "Calls sent to a member",
                             ["member", "operation"], registry=r)
        self.errors = Counter("hsm_member_errors", "Calls that failed on a member, by kind",
                              ["member", "kind"], registry=r)
        self.latency = Histogram("hsm_member_latency_seconds", "Latency of calls to a member",
                                 ["member"], registry=r,
                                 buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25,
                                          .5, 1, 2.5, 5))
        self.state = Gauge("hsm_member_state", "0 healthy, 1 suspect, 2 down", ["member"],
                           registry=r)
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
