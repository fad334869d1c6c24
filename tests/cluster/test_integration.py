"""The cluster against real SoftHSM members, with the fault-injection shim."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import hsm
from hsm.cluster import State
from hsm.cluster.ceremony import init_cluster
from hsm.errors import Reason
from hsm.testing import Harness, harness_down, harness_up
from hsm.testing.faults import FaultInjector

CTX = {"app": "test"}


@pytest.fixture
def cluster3(tmp_path: Path) -> Iterator[tuple[Harness, FaultInjector]]:
    harness = harness_up(tmp_path / "c", 3)
    init_cluster(hsm.load_config(harness.config_path))
    injector = FaultInjector(harness)
    yield harness, injector
    for member in harness.members:
        injector.heal(member.name)
    harness_down(harness.directory)


def _open(harness: Harness, **changes: object) -> hsm.Client:
    from dataclasses import replace

    config = hsm.load_config(harness.config_path)
    config = replace(config, cluster=replace(config.cluster, **changes))  # type: ignore[arg-type]
    client = hsm.Client(config)
    client.open()
    for member in client.members:
        assert member.module is not None
        member.module.reinit_interval = 0.0
    client.cluster.probe_interval = 0.05
    for health in client.cluster.health.values():
        health._interval = health._backoff = 0.05
    return client


def _wait(predicate: object, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return False


def test_keys_reach_every_member_with_one_kcv(cluster3: tuple[Harness, FaultInjector]) -> None:
    """A new key is on all three members with the same KCV; a blob sealed through the
    cluster opens on each member alone."""
    harness, _ = cluster3
    with _open(harness) as client:
        key = client.create_key()
        dk = client.generate_data_key(key.key_id, CTX)
        for member in client.members:
            assert member.keyring.key_info(key.key_id, 1).kcv == key.kcv
            assert member.keyring.unwrap(dk.wrapped, CTX) == dk.plaintext
        assert client.verify().ok


def test_device_error_on_the_primary_fails_over_and_heals(
    cluster3: tuple[Harness, FaultInjector],
) -> None:
    """With the primary returning DEVICE_ERROR, calls succeed on the next member; after
    heal, the primary is re-admitted and serves again."""
    harness, injector = cluster3
    with _open(harness) as client:
        key = client.create_key()
        injector.inject("hsm-a", "DEVICE_ERROR")
        dk = client.generate_data_key(key.key_id, CTX)
        assert client.unwrap(dk.wrapped, CTX) == dk.plaintext
        assert client.cluster.state_of("hsm-a") is State.DOWN
        down = {s.name: s for s in client.status()}["hsm-a"]
        assert (down.state, down.reason) == ("down", "device_error")
        injector.heal("hsm-a")
        assert _wait(lambda: client.cluster.state_of("hsm-a") is State.HEALTHY)
        status = {s.name: s for s in client.status()}
        assert status["hsm-a"].reason == "re-admitted"
        assert status["hsm-a"].readmissions == 1
        assert status["hsm-a"].failovers >= 1


def test_a_hang_fails_over_after_one_deadline(cluster3: tuple[Harness, FaultInjector]) -> None:
    """A hung primary costs one deadline: the call completes on another member, the primary
    is suspect, and it serves again once the hung call returns."""
    harness, injector = cluster3
    with _open(harness, deadline_ms=200) as client:
        key = client.create_key()
        injector.hang("hsm-a")
        start = time.monotonic()
        dk = client.generate_data_key(key.key_id, CTX)
        elapsed = time.monotonic() - start
        assert elapsed >= 0.2  # it waited for the deadline (no upper bound: shared machine)
        assert client.cluster.state_of("hsm-a") is State.SUSPECT
        assert client.unwrap(dk.wrapped, CTX) == dk.plaintext
        injector.heal("hsm-a")
        assert _wait(lambda: client.cluster.state_of("hsm-a") is State.HEALTHY)


def test_a_member_down_at_creation_gets_the_key_on_return(
    cluster3: tuple[Harness, FaultInjector],
) -> None:
    """A key created while a member is down reaches quorum on the others; the member gets
    it, with the same KCV, when it is re-admitted."""
    harness, injector = cluster3
    with _open(harness) as client:
        injector.lose_token("hsm-c")
        client.cluster.health["hsm-c"].failed(Reason.TOKEN_LOST)
        key = client.create_key()
        assert (key.key_id, 1) in client.cluster.pending["hsm-c"]
        injector.heal("hsm-c")
        assert _wait(lambda: client.cluster.state_of("hsm-c") is State.HEALTHY)
        member_c = client.members[2]
        assert member_c.keyring.key_info(key.key_id, 1).kcv == key.kcv
        assert client.verify().ok


def test_quorum_not_reached_rolls_back(tmp_path: Path) -> None:
    """With quorum 3 and one member down, creation fails and leaves no key anywhere."""
    harness = harness_up(tmp_path / "q", 3)
    try:
        init_cluster(hsm.load_config(harness.config_path))
        injector = FaultInjector(harness)
        with _open(harness, quorum=3) as client:
            injector.inject("hsm-c", "DEVICE_ERROR")
            with pytest.raises(hsm.QuorumNotReached, match="rolled back"):
                client.create_key()
            injector.heal("hsm-c")
            for member in client.members[:2]:
                assert member.keyring.list_keys() == []
    finally:
        harness_down(harness.directory)


def test_threads_keep_working_through_a_fault(cluster3: tuple[Harness, FaultInjector]) -> None:
    """Four threads of data keys see no failure while the primary breaks and heals."""
    harness, injector = cluster3
    with _open(harness, mode="balanced") as client:
        key = client.create_key()
        failures: list[str] = []
        stop = threading.Event()

        def work() -> None:
            # Bounded (count and time) even if nobody sets `stop`: a failed test must not
            # leave threads filling memory (pytest once reached 23.7 GB and was killed).
            end = time.monotonic() + 60
            for _ in range(100_000):
                if stop.is_set() or time.monotonic() > end or len(failures) >= 100:
                    return
                try:
                    dk = client.generate_data_key(key.key_id, CTX)
                    if client.unwrap(dk.wrapped, CTX) != dk.plaintext:
                        failures.append("mismatch")
                except hsm.HSMError as exc:
                    failures.append(repr(exc))

        threads = [threading.Thread(target=work, daemon=True) for _ in range(4)]
        try:
            for t in threads:
                t.start()
            time.sleep(0.3)
            injector.inject("hsm-a", "DEVICE_REMOVED")
            time.sleep(0.3)
            injector.heal("hsm-a")
            time.sleep(0.3)
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=30)
        assert not any(t.is_alive() for t in threads)
        assert failures == []


def test_two_tokens_of_one_module_form_a_cluster(tmp_path: Path) -> None:
    """Members may be several tokens of one module: one loaded module, two logins, keys
    replicated between the tokens under the trusted wrapping key."""
    import shutil

    from hsm.testing import find_softhsm_module
    from hsm.testing.softhsm import TokenSpec, init_tokens

    tokens = tmp_path / "tokens"
    tokens.mkdir()
    conf = tmp_path / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\n"
                    "log.level = ERROR\nslots.removable = false\n")
    module = tmp_path / "libsofthsm2-two-tokens.so"
    shutil.copy(find_softhsm_module(), module)
    (tmp_path / "pin").write_text("1234")
    (tmp_path / "so-pin").write_text("5678")
    # Through PKCS#11 (C_InitToken, C_InitPIN), the PINs on a pipe: never on a command line.
    init_tokens([TokenSpec(module, conf, label) for label in ("t-one", "t-two")],
                pin="1234", so_pin="5678")
    members = "".join(
        f'[[member]]\nname = "{label}"\nmodule = "{module}"\ntoken = "{label}"\n'
        f'pin = "file:pin"\nso_pin = "file:so-pin"\n'
        f'env = {{ SOFTHSM2_CONF = "{conf}" }}\n\n' for label in ("t-one", "t-two"))
    config = tmp_path / "hsm.toml"
    config.write_text(members)
    (tmp_path / "pin").chmod(0o600)
    (tmp_path / "so-pin").chmod(0o600)
    init_cluster(hsm.load_config(config))
    with hsm.open(config) as client:
        assert client.members[0].module is client.members[1].module
        key = client.create_key()
        dk = client.generate_data_key(key.key_id, CTX)
        assert client.members[1].keyring.unwrap(dk.wrapped, CTX) == dk.plaintext
        assert client.verify().ok
