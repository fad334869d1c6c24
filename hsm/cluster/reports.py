"""Reports on a cluster: ``verify`` (every key on every member, same KCV) and the counters
``hsm status`` shows per member."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeVar

from hsm.cluster.member import ClusterKeyring
from hsm.cluster.metrics import ClusterMetrics
from hsm.cluster.operations import Operation
from hsm.cluster.placement import KeyRef
from hsm.cluster.routing import Router
from hsm.errors import HSMError

__all__ = ["MemberReport", "VerifyReport", "counters", "verify"]

R = TypeVar("R", bound=ClusterKeyring)


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


def verify(router: Router[R]) -> VerifyReport:
    """Every key and version on every member, with matching KCVs; drift by member."""
    listings: dict[str, dict[KeyRef, str]] = {}
    reports: list[MemberReport] = []
    for member in router.members:
        try:
            member.ping()
            keys = router.attempt(member, Operation.LIST_KEYS, lambda m: m.keyring.list_keys())
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


def counters(metrics: ClusterMetrics, name: str) -> dict[str, int]:
    """Calls, errors, failovers and re-admissions of one member, from the metrics."""
    totals = {"calls": sum(c.value() for (m, _), c in metrics.calls.items() if m == name),
              "errors": 0, "failovers": 0, "readmissions": 0}
    for family, key in ((metrics.errors, "errors"), (metrics.failovers, "failovers"),
                        (metrics.readmissions, "readmissions")):
        for metric in family.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total") and sample.labels.get("member") == name:
                    totals[key] += int(sample.value)
    return totals
