"""What a drill measured (:class:`DrillReport`) and its latency plot."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from hsm.errors import InvalidInput

__all__ = ["PLOT_HINT", "DrillReport", "plot", "require_matplotlib"]


@dataclass
class DrillReport:
    """What the drill measured. ``passed`` is the verdict: no failure, no mismatch, every
    member back and holding the same keys.

    ``kcv_agreement`` is True only when every member was checked and agreed; when it is
    False, ``not_back`` names the members that could not be checked (not re-admitted or not
    answering at the final check, with why) and ``kcv_disagree`` those whose keys differ
    (missing keys, another KCV). ``skipped`` lists faults never applied because no other
    member was serving before the end.
    """

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
    not_back: dict[str, str] = field(default_factory=dict)
    kcv_disagree: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    postponed: dict[int, float] = field(default_factory=dict, repr=False)  # ms, by fault
    faults: list[dict[str, Any]] = field(default_factory=list)
    readmit_ms: dict[str, float | None] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    timeline: list[tuple[float, float, bool]] = field(default_factory=list, repr=False)

    @property
    def passed(self) -> bool:
        return (self.failed == 0 and self.mismatched == 0 and self.unverified == 0
                and self.kcv_agreement and not self.not_back)

    def as_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed, "ops": self.ops, "failed": self.failed,
            "mismatched": self.mismatched, "failovers": self.failovers,
            "p50_ms": round(self.p50_ms, 3), "p99_ms": round(self.p99_ms, 3),
            "max_ms": round(self.max_ms, 3), "data_keys_checked": self.data_keys_checked,
            "unverified": self.unverified,
            "kcv_agreement": self.kcv_agreement, "not_back": self.not_back,
            "kcv_disagree": self.kcv_disagree, "skipped": self.skipped,
            "members": self.members,
            "duration_s": self.duration, "threads": self.threads, "schedule": self.schedule,
            "faults": self.faults, "readmit_ms": self.readmit_ms, "errors": self.errors[:20],
        }


    def kcv_summary(self) -> str:
        """One phrase: ``yes``, or which members disagree and which were not back yet (a
        member not back is not a disagreement: it could not be compared, or it answers but
        was not re-admitted)."""
        if self.kcv_agreement and not self.not_back:
            return "yes"
        parts = [f"NO, {name} disagrees ({why})" for name, why in self.kcv_disagree.items()]
        parts += [f"{name} not back yet ({why})" for name, why in self.not_back.items()]
        if self.kcv_agreement:
            parts.insert(0, "yes among the members checked")
        return "; ".join(parts) or "NO"


PLOT_HINT = "--plot needs matplotlib, which is not installed: pip install 'hsm[plot]'"


def require_matplotlib() -> None:
    """InvalidInput (naming the extra to install) unless matplotlib can be imported."""
    try:
        import matplotlib  # noqa: F401 - only whether it imports
    except ImportError:
        raise InvalidInput(PLOT_HINT) from None


def plot(report: DrillReport, path: str | os.PathLike[str]) -> None:
    """Latency over time, failures in red, each fault and heal marked. Needs matplotlib
    (``pip install 'hsm[plot]'``)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InvalidInput(PLOT_HINT) from None
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
