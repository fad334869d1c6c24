"""Reports on a cluster: ``verify`` (every key on every member, same KCV) and the counters
``hsm status`` shows per member."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeVar

from hsm.cluster.health import State
from hsm.cluster.member import ClusterKeyring
from hsm.cluster.metrics import ClusterMetrics
from hsm.cluster.operations import Operation
from hsm.cluster.placement import KeyRef
from hsm.cluster.routing import Router
from hsm.errors import HSMError

__all__ = ["MemberReport", "VerifyReport", "counters", "holdings", "orphans_of", "verify"]

R = TypeVar("R", bound=ClusterKeyring)


@dataclass
class MemberReport:
    """One member in ``hsm cluster verify``."""

    name: str
    reachable: bool
    keys: int = 0
    missing: list[KeyRef] = field(default_factory=list)
    mismatched: list[KeyRef] = field(default_factory=list)
    orphans: list[KeyRef] = field(default_factory=list)  # held here, below quorum overall
    weak: list[tuple[KeyRef, list[str]]] = field(default_factory=list)
    error: str = ""

    @property
    def drift(self) -> bool:
        return bool(not self.reachable or self.missing or self.mismatched or self.orphans)


@dataclass
class VerifyReport:
    """Every member's view of the keys. ``missing``: a key that reached quorum but not this
    member (``hsm cluster resync`` copies it); ``orphans``: a key held by fewer members than
    the quorum, which no caller can have received (a create that timed out, or a key
    destroyed elsewhere while this member was away); ``weak``: keys whose attributes grant
    more than the master-key template."""

    ok: bool
    keys: int
    members: list[MemberReport]
    quorum: int = 1

    @property
    def hints(self) -> list[str]:
        """What to run about what was found, one line each."""
        out = []
        if any(m.missing for m in self.members):
            out.append("copy the missing keys with: hsm cluster resync")
        if any(m.orphans for m in self.members):
            out.append(f"orphans are below quorum ({self.quorum}) and no caller received "
                       "them; remove them with: hsm cluster resync --destroy-orphans")
        if any(m.mismatched for m in self.members):
            out.append("keys with another KCV: the members hold different material under one "
                       "label; compare the cluster wrapping keys (hsm cluster init) before "
                       "anything else")
        if any(m.weak for m in self.members):
            out.append("keys weaker than the template (more rights than they use): move "
                       "their data to a new key and destroy them")
        if any(not m.reachable for m in self.members):
            out.append("unreachable members: see hsm status")
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "keys": self.keys,
            "quorum": self.quorum,
            "members": [
                {"name": m.name, "reachable": m.reachable, "keys": m.keys,
                 "missing": [{"key_id": k, "version": v} for k, v in m.missing],
                 "mismatched": [{"key_id": k, "version": v} for k, v in m.mismatched],
                 "orphans": [{"key_id": k, "version": v} for k, v in m.orphans],
                 "weak": [{"key_id": k, "version": v, "problems": problems}
                          for (k, v), problems in m.weak],
                 "error": m.error}
                for m in self.members
            ],
            "hints": self.hints,
        }


def holdings(router: Router[R]) -> tuple[dict[str, dict[KeyRef, str]], dict[str, str]]:
    """``(member -> {key version -> KCV}, member -> error)`` from every member that answers
    a ping and a listing (each under the deadline)."""
    listings: dict[str, dict[KeyRef, str]] = {}
    errors: dict[str, str] = {}
    for member in router.members:
        if router.health[member.name].state is State.DISABLED:
            errors[member.name] = f"disabled ({router.health[member.name].last_reason})"
            continue
        try:
            router.attempt(member, Operation.PING, lambda m: m.ping())
            keys = router.attempt(member, Operation.LIST_KEYS, lambda m: m.keyring.list_keys())
        except HSMError as exc:
            errors[member.name] = str(exc)
            continue
        listings[member.name] = {(k.key_id, k.version): k.kcv for k in keys}
    return listings, errors


def orphans_of(listings: dict[str, dict[KeyRef, str]], unreachable: int,
               quorum: int) -> set[KeyRef]:
    """Key versions held by fewer than ``quorum`` members, even counting every unreachable
    member as a holder."""
    held: dict[KeyRef, int] = {}
    for listing in listings.values():
        for ref in listing:
            held[ref] = held.get(ref, 0) + 1
    return {ref for ref, count in held.items() if count + unreachable < quorum}


def verify(router: Router[R], quorum: int = 1) -> VerifyReport:
    """Every key and version on every member, with matching KCVs; drift by member."""
    listings, errors = holdings(router)
    reports = [MemberReport(m.name, m.name in listings, error=errors.get(m.name, ""))
               for m in router.members]
    union: dict[KeyRef, set[str]] = {}
    for listing in listings.values():
        for ref, kcv in listing.items():
            union.setdefault(ref, set()).add(kcv)
    orphans = orphans_of(listings, len(errors), quorum)
    by_name = {m.name: m for m in router.members}
    for report in reports:
        if not report.reachable:
            continue
        listing = listings[report.name]
        report.keys = len(listing)
        report.missing = sorted(ref for ref in union if ref not in listing and ref not in orphans)
        report.mismatched = sorted(ref for ref in listing if len(union[ref]) > 1)
        report.orphans = sorted(ref for ref in listing if ref in orphans)
        try:
            weak = router.attempt(by_name[report.name], Operation.LIST_KEYS,
                                  lambda m: m.keyring.weak_keys())
        except HSMError as exc:
            report.error = f"could not check key attributes: {exc}"
        else:
            report.weak = sorted(((k.key_id, k.version), problems) for k, problems in weak)
    ok = all(not r.drift and not r.weak for r in reports)
    return VerifyReport(ok, len(union), reports, quorum)


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
