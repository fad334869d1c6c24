"""Cluster: several HSM members served as one, with failover, deadlines and a quorum.

Hazmat: applications use :func:`hsm.open`, which builds a cluster from the config.
"""

from hsm.cluster.cluster import CallRecord, Cluster, MemberReport, VerifyReport
from hsm.cluster.health import Health, State, Transition
from hsm.cluster.member import HSMMember, MemberBackend
from hsm.cluster.policy import Attempt, Decision, FailoverPolicy, Operation, Outcome

__all__ = [
    "Attempt",
    "CallRecord",
    "Cluster",
    "Decision",
    "FailoverPolicy",
    "HSMMember",
    "Health",
    "MemberBackend",
    "MemberReport",
    "Operation",
    "Outcome",
    "State",
    "Transition",
    "VerifyReport",
]
