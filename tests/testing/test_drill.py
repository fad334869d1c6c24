"""Failover drills, short enough for CI: every fault kind, nothing lost."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import hsm
from hsm.cli import cli
from hsm.testing.drill import default_schedule, parse_schedule, run_drill


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
