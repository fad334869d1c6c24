"""Failover drills, short enough for CI: every fault kind, nothing lost."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

import hsm
from hsm.cli import cli
from hsm.testing import drill as drill_impl
from hsm.testing.drill import (
    DrillReport,
    check_schedule,
    default_schedule,
    parse_schedule,
    run_drill,
)
from hsm.testing.plugin import HarnessFactory


def _one_error_line(result: Result) -> str:
    assert result.exit_code == 1, (result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("hsm: error: ")
    return lines[0]


def test_a_short_drill_loses_nothing(tmp_path: Path) -> None:
    """A 6 s drill on three members through every default fault kind: no failed call, no
    mismatch, every data key opens on every member, KCVs agree, every member re-admitted."""
    report = run_drill(members=3, duration=6, threads=3)
    assert report.ops > 100
    assert report.failed == 0, report.errors[:5]
    assert report.mismatched == 0
    assert report.unverified == 0
    assert report.kcv_agreement
    assert report.passed
    assert {f["fault"] for f in report.faults} == {
        "device-error", "hang", "session-handle-invalid", "function-failed", "lose-token",
        "finalize"}
    assert all(ms is not None for ms in report.readmit_ms.values())
    assert report.failovers >= 1


def test_drill_cli_json_and_plot(tmp_path: Path) -> None:
    """hsm drill --json prints one object with the documented fields; --plot writes a PNG."""
    png = tmp_path / "drill.png"
    result = CliRunner().invoke(cli, [
        "drill", "--members", "2", "--duration", "3", "--threads", "2", "--json",
        "--schedule", "1s:hsm-b=device-error,2s:hsm-b=heal", "--plot", str(png)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    for field in ("ops", "failed", "mismatched", "failovers", "p50_ms", "p99_ms", "max_ms"):
        assert field in report
    assert report["failed"] == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_schedules_parse_and_refuse_nonsense() -> None:
    """Schedules parse in time order; a bad item is an InvalidInput naming it."""
    events = parse_schedule("8s:b=heal,3s:b=device-error", ["a", "b"])
    assert [(e.at, e.member, e.action) for e in events] == [(3.0, "b", "device-error"),
                                                            (8.0, "b", "heal")]
    for bad in ("3s:c=heal", "3s:b=melt", "soon:b=heal", "b=heal"):
        with pytest.raises(hsm.InvalidInput, match="schedule item"):
            parse_schedule(bad, ["a", "b"])
    default = default_schedule(["a", "b", "c"], 20)
    assert {e.action for e in default} >= {"lose-token", "hang", "heal"}
    assert any(e.member == "a" and e.action == "lose-token" for e in default)


@pytest.mark.parametrize("members", [2, 3, 5])
@pytest.mark.parametrize("duration", [6.0, 20.0])
def test_the_default_schedule_always_leaves_a_member_serving(members: int,
                                                             duration: float) -> None:
    """For any member count, the default schedule heals each fault before the next one,
    passes check_schedule, uses every fault kind and loses the primary's token last."""
    names = [f"m{i}" for i in range(members)]
    events = default_schedule(names, duration)
    check_schedule(events, names)
    faults = [e for e in events if e.action != "heal"]
    assert [e.action for e in events[1::2]] == ["heal"] * len(faults)
    assert [(e.member, e.action) for e in faults][-1] == ("m0", "lose-token")
    assert all(e.at < duration for e in events)


def test_schedules_that_leave_no_member_serving_are_refused() -> None:
    """Faulting every member at once, or a drill of one member, is an InvalidInput saying
    so; finalize needs no heal and faulting a member again after its heal is fine."""
    with pytest.raises(hsm.InvalidInput, match="no member serving at 2s"):
        check_schedule(parse_schedule("1s:a=device-error,2s:b=hang", ["a", "b"]), ["a", "b"])
    with pytest.raises(hsm.InvalidInput, match="at least 2 members"):
        default_schedule(["a"], 20)
    with pytest.raises(hsm.InvalidInput, match="at least 2 members"):
        check_schedule([], ["a"])
    fine = "1s:a=finalize,2s:b=lose-token,3s:b=heal,3s:a=hang,4s:a=heal,5s:b=device-error"
    check_schedule(parse_schedule(fine, ["a", "b"]), ["a", "b"])


def test_the_cli_refuses_such_a_schedule_before_any_traffic() -> None:
    """hsm drill with a schedule faulting both members of two: one error line, exit 1;
    --members 1: a usage error."""
    line = _one_error_line(CliRunner().invoke(cli, [
        "drill", "--members", "2", "--duration", "5",
        "--schedule", "1s:hsm-a=device-error,2s:hsm-b=device-error"]))
    assert "leaves no member serving at 2s (hsm-a, hsm-b all faulted)" in line
    assert CliRunner().invoke(cli, ["drill", "--members", "1"]).exit_code == 2


def test_a_two_member_drill_with_the_default_schedule_loses_nothing() -> None:
    """Two members, the default schedule: no call fails (a fault waits until the member
    healed before it is back), every fault kind is applied, every member is re-admitted
    and agrees."""
    report = run_drill(members=2, duration=8, threads=2)
    assert report.failed == 0, report.errors[:5]
    assert report.passed, report.as_dict()
    assert {f["fault"] for f in report.faults} == {
        "device-error", "hang", "session-handle-invalid", "function-failed", "lose-token",
        "finalize"}, report.skipped


def test_a_member_not_back_yet_is_not_a_kcv_disagreement(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A member broken until the very end (healed then, with no time left to re-admit
    it) is reported as not back yet, not as disagreeing: the drill fails for that reason."""
    monkeypatch.setattr(drill_impl, "READMIT_TIMEOUT", 0.0)
    report = run_drill(members=3, duration=1.5, threads=2,
                       schedule="0.5s:hsm-b=device-error")
    assert report.not_back.get("hsm-b", "").startswith("down: not re-admitted")
    assert report.kcv_disagree == {}
    assert not report.passed
    summary = report.kcv_summary()
    assert "hsm-b not back yet" in summary
    assert "NO" not in summary
    assert report.as_dict()["not_back"] == report.not_back


def test_the_kcv_summary_tells_disagreement_from_absence() -> None:
    """'yes' when all agree; 'NO, X disagrees (...)' for another KCV or missing keys; a
    member not back is named as such, even when the others agree."""
    report = DrillReport(["a", "b", "c"], 1.0, 1, [])
    report.kcv_agreement = True
    assert report.kcv_summary() == "yes"
    report.not_back = {"c": "down"}
    assert report.kcv_summary() == "yes among the members checked; c not back yet (down)"
    assert not report.passed
    report.kcv_agreement = False
    report.kcv_disagree = {"b": "1 missing"}
    assert report.kcv_summary() == "NO, b disagrees (1 missing); c not back yet (down)"


def test_plot_without_matplotlib_is_refused_before_the_drill(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """--plot with matplotlib missing: one error line naming the extra to install, and no
    drill run first."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib: ImportError

    def no_drill(**_kwargs: Any) -> DrillReport:
        raise AssertionError("the drill ran before matplotlib was checked")

    monkeypatch.setattr(drill_impl, "run_drill", no_drill)
    line = _one_error_line(CliRunner().invoke(cli, ["drill", "--plot",
                                                   str(tmp_path / "d.png")]))
    assert "pip install 'hsm[plot]'" in line
    assert "matplotlib" in line
    assert not (tmp_path / "d.png").exists()


def test_drill_runs_on_the_harness_hsm_config_names(hsm_harness_factory: HarnessFactory,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """With $HSM_CONFIG exported and no --config, hsm drill runs on that harness (its own
    member names), as its --config help says."""
    harness = hsm_harness_factory(2, names=["left", "right"], faults=True)
    monkeypatch.setenv("HSM_CONFIG", str(harness.config_path))
    result = CliRunner().invoke(cli, [
        "drill", "--duration", "1", "--threads", "1", "--json",
        "--schedule", "0.3s:right=device-error,0.6s:right=heal"])
    assert result.exit_code == 0, (result.stdout, result.stderr)
    report = json.loads(result.stdout)
    assert report["members"] == ["left", "right"]
    assert [f["member"] for f in report["faults"]] == ["right"]
