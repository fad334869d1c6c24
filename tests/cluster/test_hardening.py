"""The cluster under the attacks of the hardening review, on real SoftHSM members with the
fault-injection module: hung and lost members at open, a CLI that must exit after a
deadline error, a quorum create right after a heal, drift that resync repairs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import hsm
from hsm.cluster import State
from hsm.cluster.ceremony import init_cluster
from hsm.pkcs11 import PinSource
from hsm.testing import Harness, harness_down, harness_up
from hsm.testing.faults import FaultInjector

CTX = {"tenant": "acme"}

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster3(tmp_path: Path) -> Iterator[tuple[Harness, FaultInjector]]:
    harness = harness_up(tmp_path / "c", 3, faults=True)
    init_cluster(hsm.load_config(harness.config_path))
    injector = FaultInjector(harness)
    try:
        yield harness, injector
    finally:
        injector.heal_all()
        harness_down(harness.directory)


def _config(harness: Harness, **changes: object) -> hsm.Config:
    from dataclasses import replace

    config = hsm.load_config(harness.config_path)
    return replace(config, cluster=replace(config.cluster, **changes))  # type: ignore[arg-type]


def _cli(harness: Harness, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HSM_CONFIG": str(harness.config_path)}
    return subprocess.run([sys.executable, "-m", "hsm.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env=env, check=False)


def _wait(predicate: object, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return False


def test_a_hung_member_does_not_stop_a_client_from_opening(
    cluster3: tuple[Harness, FaultInjector],
) -> None:
    """With one member hung in every call, hsm.open returns with the other two, serves, and
    the hung member is suspect; after the heal it comes back up to date."""
    harness, injector = cluster3
    injector.hang("hsm-c")
    opened: list[hsm.Client] = []
    opener = threading.Thread(target=lambda: opened.append(
        hsm.open(_config(harness, deadline_ms=300))), daemon=True)
    opener.start()
    opener.join(60)  # a regression hangs here: fail instead of hanging the suite
    assert opened, "hsm.open did not return with a member hung"
    with opened[0] as client:
        assert client.cluster.state_of("hsm-c") is State.SUSPECT
        key = client.create_key()
        dk = client.generate_data_key(key.key_id, CTX)
        assert client.unwrap(dk.wrapped, CTX) == dk.plaintext
        for member in client.members:
            if member.module is not None:
                member.module.reinit_interval = 0.0
        injector.heal("hsm-c")
        assert _wait(lambda: client.cluster.state_of("hsm-c") is State.HEALTHY, 20)
        assert client.verify().ok


def test_the_cli_answers_with_a_member_hung(cluster3: tuple[Harness, FaultInjector]) -> None:
    """hsm key list, hsm status, hsm cluster verify and hsm data-key return while a member
    hangs (the hang lasts until the heal, after the commands): no command waits for it."""
    harness, injector = cluster3
    created = _cli(harness, "key", "create", "--json")
    assert created.returncode == 0, created.stderr
    key_id = json.loads(created.stdout)["key_id"]
    injector.hang("hsm-c")
    listed = _cli(harness, "key", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert key_id in listed.stdout
    dk = _cli(harness, "data-key", "--key", key_id, "--json")
    assert dk.returncode == 0, dk.stderr
    status = _cli(harness, "status", "--json")
    assert status.returncode == 0, status.stderr  # two members answer
    members = {m["name"]: m for m in json.loads(status.stdout)["members"]}
    assert [members[n]["reachable"] for n in ("hsm-a", "hsm-b")] == [True, True]
    assert members["hsm-c"]["reachable"] is False
    assert members["hsm-c"]["state"] == "suspect"
    assert "no answer within" in members["hsm-c"]["error"]
    verify = _cli(harness, "cluster", "verify")
    assert verify.returncode == 1  # hsm-c can't be asked: reported, not waited for
    assert "hsm-c" in verify.stdout + verify.stderr


def test_a_lost_token_leaves_the_rest_of_the_cluster_usable(
    cluster3: tuple[Harness, FaultInjector],
) -> None:
    """After hsm fault lose-token hsm-c, hsm key list and hsm data-key work on the other two
    members, and hsm status says hsm-c is down and what failed (SoftHSM can't initialize
    without its token directory: transient, not a permanent ModuleLoadError)."""
    harness, injector = cluster3
    created = _cli(harness, "key", "create", "--json")
    assert created.returncode == 0, created.stderr
    key_id = json.loads(created.stdout)["key_id"]
    injector.lose_token("hsm-c")
    listed = _cli(harness, "key", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert key_id in listed.stdout
    dk = _cli(harness, "data-key", "--key", key_id, "--json")
    assert dk.returncode == 0, dk.stderr
    status = _cli(harness, "status", "--json")
    assert status.returncode == 0, status.stderr
    lost = {m["name"]: m for m in json.loads(status.stdout)["members"]}["hsm-c"]
    assert lost["state"] == "down"
    assert "failed to initialize" in lost["error"]
    assert not lost["error"].rstrip().endswith(":")  # the message says what failed


def test_the_cli_exits_right_after_a_deadline_error(
    cluster3: tuple[Harness, FaultInjector],
) -> None:
    """With key generation hung on the first member, hsm key create reports the deadline
    error and exits while the hang is still on (it does not wait for the hung thread)."""
    harness, injector = cluster3
    injector.hang("hsm-a", calls="C_GenerateKey")
    done = _cli(harness, "key", "create", timeout=60)
    assert injector.fault("hsm-a") is not None  # still hung when the command had exited
    assert done.returncode == 1
    assert "no answer within" in done.stderr


def test_a_quorum_create_right_after_a_heal(cluster3: tuple[Harness, FaultInjector]) -> None:
    """A member healed a moment ago counts towards the quorum at once (it is probed before
    quorum is refused), with every member required."""
    harness, injector = cluster3
    with hsm.open(_config(harness, quorum=3)) as client:
        for member in client.members:
            if member.module is not None:
                member.module.reinit_interval = 0.0
        client.cluster.probe_interval = 3600  # no background probe helps here
        injector.inject("hsm-a", "DEVICE_ERROR")
        client.generate_random(8)  # served elsewhere; hsm-a is down
        assert client.cluster.state_of("hsm-a") is State.DOWN
        with pytest.raises(hsm.QuorumNotReached):
            client.create_key()  # hsm-a was probed, and still fails
        client.cluster.health["hsm-a"].next_probe = time.monotonic() + 3600
        injector.heal("hsm-a")
        key = client.create_key()
        assert all(m.keyring.key_info(key.key_id, 1).kcv == key.kcv for m in client.members)


def test_readme_drift_sequence_is_repaired_by_resync(
    cluster3: tuple[Harness, FaultInjector],
) -> None:
    """README's sequence (break hsm-a, create a key, heal it, verify) reports the drift,
    says to run hsm cluster resync, and resync repairs it."""
    harness, _injector = cluster3
    assert _cli(harness, "fault", "inject", "hsm-a", "--error", "DEVICE_ERROR").returncode == 0
    created = _cli(harness, "key", "create", "--json")
    assert created.returncode == 0, created.stderr
    key_id = json.loads(created.stdout)["key_id"]
    assert _cli(harness, "fault", "heal", "hsm-a").returncode == 0
    drift = _cli(harness, "cluster", "verify")
    assert drift.returncode == 1
    assert "missing" in drift.stdout
    assert key_id in drift.stdout
    assert "hsm cluster resync" in drift.stdout + drift.stderr
    resync = _cli(harness, "cluster", "resync", "--json")
    assert resync.returncode == 0, resync.stderr
    assert json.loads(resync.stdout)["copied"]["hsm-a"] == [{"key_id": key_id, "version": 1}]
    fine = _cli(harness, "cluster", "verify")
    assert fine.returncode == 0, fine.stdout + fine.stderr


def test_only_one_wrong_pin_is_named_and_the_rest_serve(
    cluster3: tuple[Harness, FaultInjector], tmp_path: Path,
) -> None:
    """With only hsm-b's PIN wrong, the client opens with hsm-a and hsm-c, hsm-b is
    disabled with the reason, and an error with every PIN wrong names each member."""
    harness, _ = cluster3
    wrong = tmp_path / "wrong-pin"
    wrong.write_text("0000")
    wrong.chmod(0o600)
    from dataclasses import replace

    config = _config(harness)
    members = [replace(m, pin=PinSource("file", str(wrong)))
               if m.name == "hsm-b" else m for m in config.members]
    with hsm.open(replace(config, members=tuple(members))) as client:
        status = {s.name: s for s in client.status()}
        assert (status["hsm-b"].state, status["hsm-b"].reason) == ("disabled", "pin_incorrect")
        assert status["hsm-a"].state == "healthy"
        key = client.create_key()
        assert client.generate_data_key(key.key_id).key_id == key.key_id
    every = [replace(m, pin=PinSource("file", str(wrong)))
             for m in config.members]
    with pytest.raises(hsm.PinIncorrect) as refused:
        hsm.open(replace(config, members=tuple(every)))
    assert all(name in str(refused.value) for name in ("hsm-a", "hsm-b", "hsm-c"))
    assert "0000" not in str(refused.value)


def test_a_wrong_pin_is_never_tried_twice(
    cluster3: tuple[Harness, FaultInjector], tmp_path: Path,
) -> None:
    """A member whose PIN is wrong and is down at start gets exactly one C_Login when it
    comes back, however often the cluster probes it; a second client in the same process
    sends that PIN no more at all."""
    harness, injector = cluster3
    wrong = tmp_path / "wrong-pin"
    wrong.write_text("0000")
    wrong.chmod(0o600)
    from dataclasses import replace

    config = _config(harness, deadline_ms=500)
    config = replace(config, members=tuple([
        replace(m, pin=PinSource("file", str(wrong))) if m.name == "hsm-b" else m
        for m in config.members]))
    logins = []
    for down_at_start in (True, False):
        injector.count_calls("hsm-b", "C_Login")
        if down_at_start:
            injector.inject("hsm-b", "DEVICE_ERROR", calls="C_GetSlotList,C_GetTokenInfo")
        with hsm.open(config) as client:
            if down_at_start:
                assert client.cluster.state_of("hsm-b") is State.DOWN
                injector.heal("hsm-b")
            for _ in range(20):
                client.cluster.check_members(now=True)
            assert client.cluster.state_of("hsm-b") is State.DISABLED
        logins.append(injector.stop_counting("hsm-b")["C_Login"])
    assert logins == [1, 0]


def test_a_create_that_outlived_its_deadline_leaves_a_reported_orphan(
    cluster3: tuple[Harness, FaultInjector],
) -> None:
    """A key whose creation finished on one member after its caller got a deadline error is
    an orphan: verify says no caller received it and how to remove it, resync never
    copies it, and resync --destroy-orphans removes it."""
    harness, injector = cluster3
    with hsm.open(_config(harness, deadline_ms=300)) as client:
        injector.inject("hsm-a", delay_ms=1200, calls="C_GenerateKey")
        with pytest.raises(hsm.HSMUnavailable) as late:
            client.create_key()
        assert late.value.reason is hsm.Reason.DEADLINE
        assert _wait(lambda: client.cluster.health["hsm-a"].hung == 0, 20)
        injector.heal("hsm-a")
        client.cluster.check_members(now=True)
        report = client.verify()
        orphans = report.members[0].orphans
        assert len(orphans) == 1
        assert any("--destroy-orphans" in hint for hint in report.hints)
        assert not client.resync()["copied"]["hsm-b"]
        done = client.resync(destroy_orphans=True)
        assert done["destroyed"] == {"hsm-a": orphans}
        assert client.verify().ok
