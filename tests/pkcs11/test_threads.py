"""Thread safety: many threads share one client on one SoftHSM without a crash."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from hsm.testing import Harness

STRESS = Path(__file__).with_name("stress.py")


def test_eight_threads_mixed_operations_for_seconds(hsm_harness: Harness) -> None:
    """8 threads x 4 s of data keys, wraps, refused contexts, random, listings, with the
    module re-initialized under load every 0.4 s: the process survives, no call fails and
    every result is right."""
    run = subprocess.run(
        [sys.executable, str(STRESS), str(hsm_harness.config_path), "4", "8"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert run.returncode == 0, f"exit {run.returncode}: {run.stdout[-2000:]} {run.stderr[-2000:]}"
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["problem_count"] == 0, report["problems"]
    counts = report["counts"]
    assert counts["datakey"] > 100
    assert counts["wrap"] > 100
    assert counts["refused"] > 50
    assert counts["reinitialize"] >= 3
