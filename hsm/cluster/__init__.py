"""Cluster: several HSM members served as one, with failover, deadlines and a quorum.

Hazmat: applications use :func:`hsm.open`, which builds a cluster from the config.
"""

from hsm.cluster.cluster import Cluster
from hsm.cluster.health import Health, State, Transition
from hsm.cluster.member import ClusterKeyring, HSMMember, Member
from hsm.cluster.operations import Operation
from hsm.cluster.policy import Attempt, Decision, FailoverPolicy, Outcome
from hsm.cluster.reports import MemberReport, VerifyReport
from hsm.cluster.routing import CallRecord

__all__ = [
    "Attempt",
    "CallRecord",
    "Cluster",
    "ClusterKeyring",
    "Decision",
    "FailoverPolicy",
    "HSMMember",
    "Health",
    "Member",
    "MemberReport",
    "Operation",
    "Outcome",
    "State",
    "Transition",
    "VerifyReport",
]
