"""Many processes opening the same tokens at the same moment: every open succeeds.

SoftHSM rewrites a token's record file at every login and lets other processes read it half
written (see hsm.pkcs11.storelock); without the store lock about one open in eight failed
with TokenNotFound ("tokens present: none") or general_error.
"""

from __future__ import annotations

import multiprocessing
from typing import Any

from hsm.testing import Harness
from hsm.testing.plugin import HarnessFactory

PROCESSES = 8
ROUNDS = 5


def _open_at_once(config: str, barrier: Any, results: Any) -> None:
    """In a fresh process: wait for the others, open a client, use it, report."""
    import hsm

    barrier.wait(timeout=60)
    try:
        with hsm.open(config) as client:
            down = [member.name for member in client.members if not member.connected]
            client.list_keys()
            client.generate_random(8)
        results.put(f"members not opened: {down}" if down else "ok")
    except Exception as exc:  # reported to the parent, which fails the test with it
        results.put(f"{type(exc).__name__} ({getattr(exc, 'reason', '')}): {exc}")


def _rounds(harness: Harness, rounds: int = ROUNDS) -> list[str]:
    ctx = multiprocessing.get_context("spawn")
    outcomes: list[str] = []
    for _ in range(rounds):
        barrier = ctx.Barrier(PROCESSES)
        results = ctx.Queue()
        workers = [ctx.Process(target=_open_at_once,
                               args=(str(harness.config_path), barrier, results))
                   for _ in range(PROCESSES)]
        for worker in workers:
            worker.start()
        outcomes += [results.get(timeout=120) for _ in workers]
        for worker in workers:
            worker.join(timeout=60)
            assert worker.exitcode == 0
    return outcomes


def test_eight_processes_open_one_token_at_once(hsm_harness: Harness) -> None:
    """Eight processes released by a barrier open the same one-member harness at once, five
    rounds: every open and every call succeeds."""
    outcomes = _rounds(hsm_harness)
    assert [o for o in outcomes if o != "ok"] == []
    assert len(outcomes) == PROCESSES * ROUNDS


def test_eight_processes_open_a_cluster_at_once(hsm_harness_factory: HarnessFactory) -> None:
    """The same with a two-member harness, three rounds: every member of every process
    opens."""
    outcomes = _rounds(hsm_harness_factory(2), rounds=3)
    assert [o for o in outcomes if o != "ok"] == []
