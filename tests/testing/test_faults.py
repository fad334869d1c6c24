"""Fault injection: the pass-through PKCS#11 shim in front of real SoftHSM instances, the
FaultInjector API, harness integration and ``hsm fault ...``."""

from __future__ import annotations

import ctypes
import dataclasses
import json
import logging
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

import hsm
from hsm.cli import cli
from hsm.config import Config, load_config
from hsm.pkcs11 import Module
from hsm.testing import Fault, FaultInjector, Harness, HarnessError, harness_up, load_harness
from hsm.testing import faults as faults_impl
from hsm.testing import shim as shim_impl
from hsm.testing.plugin import HarnessFactory

CONTEXT = {"tenant": "acme"}


# -- helpers ---------------------------------------------------------------------------------


def _module(client: hsm.Client) -> Module:
    module = client._primary.module
    assert module is not None
    return module


def _open(config: Config | Path) -> hsm.Client:
    client = hsm.open(config)
    # Recovery is rate-limited (default: one re-initialize per 5 s); these tests don't wait.
    _module(client).reinit_interval = 0.0
    return client


def _only(harness: Harness, name: str) -> Config:
    """A one-member config for ``name``, cut from the harness's hsm.toml."""
    config = load_config(harness.config_path)
    return dataclasses.replace(config, members=(config.member(name),),
                               cluster=dataclasses.replace(config.cluster, quorum=1))


@pytest.fixture
def one(hsm_harness_factory: HarnessFactory) -> Harness:
    return hsm_harness_factory(1, faults=True)  # no silent fallback: these need the shim


@pytest.fixture
def client(one: Harness) -> Iterator[hsm.Client]:
    with _open(one.config_path) as c:
        yield c


@pytest.fixture
def injector(one: Harness) -> FaultInjector:
    return FaultInjector(one)


def _control_files(member_dir: Path) -> list[str]:
    return sorted(p.name for p in member_dir.iterdir() if "fault" in p.name)


# -- the shim in the harness -----------------------------------------------------------------


def test_harness_members_load_softhsm_through_their_own_shim(one: Harness) -> None:
    """hsm.toml names each member's shim copy; its sidecar names that member's SoftHSM copy
    and control file; the manifest records that faults are available."""
    member = one.members[0]
    assert one.faults
    assert member.faults
    assert load_config(one.config_path).members[0].module == str(member.module)
    assert member.module.name == f"libp11shim-{member.name}.so"
    sidecar = shim_impl.sidecar(member.module).read_text()
    assert f"module={member.softhsm_module}\n" in sidecar
    assert f"control={member.fault_control}\n" in sidecar
    assert json.loads((one.directory / "harness.json").read_text())["faults"] is True
    assert load_harness(one.directory) == one


def test_the_shim_exports_only_a_2_40_function_list(one: Harness) -> None:
    """No C_GetInterface: python-pkcs11 then uses the shim's list, never the real module's."""
    shim = ctypes.CDLL(str(one.members[0].module))
    assert shim.C_GetFunctionList
    with pytest.raises(AttributeError):
        _ = shim.C_GetInterface
    with pytest.raises(AttributeError):
        _ = shim.C_GetInterfaceList


def test_a_healthy_shim_is_transparent(client: hsm.Client) -> None:
    """Through the shim: keys, data keys, wraps, status with OS locking on."""
    key = client.create_key()
    dk = client.generate_data_key(key.key_id, CONTEXT)
    assert client.unwrap(dk.wrapped, CONTEXT) == dk.plaintext
    with pytest.raises(hsm.InvalidCiphertext):
        client.unwrap(dk.wrapped, {"tenant": "other"})
    assert client.status()[0].os_locking


# -- error codes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        ("DEVICE_ERROR", "device_error"),
        ("DEVICE_REMOVED", "device_removed"),
        ("TOKEN_NOT_PRESENT", "token_not_present"),
        ("SESSION_HANDLE_INVALID", "session_handle_invalid"),
        ("FUNCTION_FAILED", "function_failed"),
        ("SESSION_CLOSED", "session_closed"),
        ("0x30", "device_error"),
    ],
)
def test_each_injected_code_is_the_expected_error_and_heals(
    one: Harness, client: hsm.Client, injector: FaultInjector, error: str, reason: str
) -> None:
    """An injected CKR code reaches the caller as HSMUnavailable with the matching reason;
    after heal the same client works again."""
    key = client.create_key()
    dk = client.generate_data_key(key.key_id, CONTEXT)
    injector.inject("hsm-a", error)
    with pytest.raises(hsm.HSMUnavailable) as caught:
        client.unwrap(dk.wrapped, CONTEXT)
    assert caught.value.reason == reason
    assert caught.value.transient
    injector.heal("hsm-a")
    assert client.unwrap(dk.wrapped, CONTEXT) == dk.plaintext
    again = client.generate_data_key(key.key_id, CONTEXT)
    assert client.unwrap(again.wrapped, CONTEXT) == again.plaintext


@pytest.mark.parametrize("error", ["DEVICE_ERROR", "FUNCTION_FAILED", "SESSION_HANDLE_INVALID"])
def test_healing_needs_no_reinitialize(client: hsm.Client, injector: FaultInjector,
                                       error: str) -> None:
    """Deleting the control file is the whole cure: the module generation never moves."""
    key = client.create_key()
    blob = client.wrap(key.key_id, b"k" * 32, CONTEXT)
    generation = _module(client).generation
    injector.inject("hsm-a", error)
    for _ in range(3):
        with pytest.raises(hsm.HSMUnavailable):
            client.unwrap(blob, CONTEXT)
    injector.heal("hsm-a")
    assert client.unwrap(blob, CONTEXT) == b"k" * 32
    assert _module(client).generation == generation


def test_calls_limits_the_fault_to_some_functions(client: hsm.Client,
                                                  injector: FaultInjector) -> None:
    """calls=C_Decrypt breaks unwrap but leaves data-key generation (C_Encrypt) alone."""
    key = client.create_key()
    dk = client.generate_data_key(key.key_id, CONTEXT)
    injector.inject("hsm-a", "DEVICE_ERROR", calls="C_Decrypt")
    fresh = client.generate_data_key(key.key_id, CONTEXT)
    with pytest.raises(hsm.HSMUnavailable, match="DeviceError"):
        client.unwrap(dk.wrapped, CONTEXT)
    injector.heal("hsm-a")
    assert client.unwrap(fresh.wrapped, CONTEXT) == fresh.plaintext


def test_library_calls_stay_healthy_unless_named(client: hsm.Client,
                                                 injector: FaultInjector) -> None:
    """By default C_Initialize/C_Finalize pass, so the module can still be re-initialized;
    calls='*' faults them too."""
    module = _module(client)
    injector.inject("hsm-a", "DEVICE_ERROR")
    generation = module.generation
    assert module.reinitialize(generation) == generation + 1
    injector.inject("hsm-a", "DEVICE_ERROR", calls="*")
    with pytest.raises(hsm.HSMUnavailable):
        module.reinitialize(module.generation)
    injector.heal("hsm-a")
    key = client.create_key()  # the failed re-initialize is retried on the next call
    dk = client.generate_data_key(key.key_id)
    assert client.unwrap(dk.wrapped) == dk.plaintext


def test_a_fault_with_a_duration_ends_by_itself(client: hsm.Client,
                                                injector: FaultInjector) -> None:
    """duration_ms: the fault is over after that long, with nobody healing it."""
    key = client.create_key()
    blob = client.wrap(key.key_id, bytes(32))
    injector.inject("hsm-a", "FUNCTION_FAILED", duration_ms=1000)
    with pytest.raises(hsm.HSMUnavailable):
        client.unwrap(blob)
    time.sleep(1.1)
    assert client.unwrap(blob) == bytes(32)
    current = injector.fault("hsm-a")
    assert current is not None
    assert current.expired


# -- other members ----------------------------------------------------------------------------


def test_a_second_member_is_unaffected_and_keeps_serving_during_a_hang(
    hsm_harness_factory: HarnessFactory,
) -> None:
    """Two members in one process, each through its own shim: faulting (even hanging) one
    leaves the other answering."""
    harness = hsm_harness_factory(2, faults=True)
    injector = FaultInjector(harness)
    with _open(_only(harness, "hsm-a")) as a, _open(_only(harness, "hsm-b")) as b:
        key_a, key_b = a.create_key(), b.create_key()
        dk_a = a.generate_data_key(key_a.key_id, CONTEXT)
        injector.inject("hsm-a", "DEVICE_ERROR")
        with pytest.raises(hsm.HSMUnavailable):
            a.unwrap(dk_a.wrapped, CONTEXT)
        dk_b = b.generate_data_key(key_b.key_id, CONTEXT)
        assert b.unwrap(dk_b.wrapped, CONTEXT) == dk_b.plaintext

        injector.hang("hsm-a")
        done: list[Any] = []
        stuck = threading.Thread(target=lambda: done.append(a.unwrap(dk_a.wrapped, CONTEXT)),
                                 daemon=True)
        stuck.start()
        try:
            for _ in range(20):
                again = b.generate_data_key(key_b.key_id, CONTEXT)
                assert b.unwrap(again.wrapped, CONTEXT) == again.plaintext
            assert stuck.is_alive()
            assert not done
        finally:
            injector.heal("hsm-a")  # releases the hung call, whatever happened above
            stuck.join(timeout=10)
        assert not stuck.is_alive()
        assert done == [dk_a.plaintext]


# -- latency and hangs ------------------------------------------------------------------------


def _get_info(member_module: Path) -> Any:
    """The shim's own C_GetInfo, called through ctypes (nothing of python-pkcs11 around it)."""
    shim = ctypes.CDLL(str(member_module))
    functions = ctypes.c_void_p()
    assert shim.C_GetFunctionList(ctypes.byref(functions)) == 0
    table = ctypes.cast(functions, ctypes.POINTER(ctypes.c_void_p))
    return ctypes.CFUNCTYPE(ctypes.c_ulong, ctypes.c_void_p)(table[3])  # C_GetInfo


def test_a_delay_never_sleeps_less_than_asked(one: Harness, injector: FaultInjector) -> None:
    """Every delayed call takes at least delay_ms, measured in nanoseconds around the call
    itself (the shim once counted whole milliseconds and could come up to 1 ms short)."""
    get_info = _get_info(one.members[0].module)
    info = ctypes.create_string_buffer(256)
    injector.inject("hsm-a", delay_ms=12, calls="C_GetInfo")
    try:
        took = []
        for _ in range(40):
            start = time.perf_counter_ns()
            get_info(info)
            took.append(time.perf_counter_ns() - start)
    finally:
        injector.heal("hsm-a")
    assert min(took) >= 12_000_000, sorted(took)[:5]


def test_delay_adds_latency(client: hsm.Client, injector: FaultInjector) -> None:
    """delay_ms slows every call down (lower bound only) and the call still succeeds."""
    key = client.create_key()
    dk = client.generate_data_key(key.key_id)
    injector.inject("hsm-a", delay_ms=150, calls="C_Decrypt")
    start = time.monotonic()
    assert client.unwrap(dk.wrapped) == dk.plaintext
    assert time.monotonic() - start >= 0.15
    injector.inject("hsm-a", "DEVICE_ERROR", delay_ms=150, calls="C_DecryptInit")
    start = time.monotonic()
    with pytest.raises(hsm.HSMUnavailable):
        client.unwrap(dk.wrapped)
    assert time.monotonic() - start >= 0.15
    injector.heal("hsm-a")
    assert client.unwrap(dk.wrapped) == dk.plaintext


def test_a_hang_blocks_the_call_until_healed(client: hsm.Client,
                                             injector: FaultInjector) -> None:
    """A hung call stays in its thread until heal, then completes normally."""
    key = client.create_key()
    injector.hang("hsm-a")
    results: list[Any] = []
    worker = threading.Thread(
        target=lambda: results.append(client.generate_data_key(key.key_id, CONTEXT)),
        daemon=True)
    worker.start()
    try:
        worker.join(timeout=0.5)
        assert worker.is_alive()
        assert results == []
    finally:
        injector.heal("hsm-a")  # releases the hung call, whatever happened above
        worker.join(timeout=10)
    assert not worker.is_alive()
    (dk,) = results
    assert client.unwrap(dk.wrapped, CONTEXT) == dk.plaintext


def test_a_hang_with_ms_ends_by_itself(client: hsm.Client, injector: FaultInjector) -> None:
    """hang(ms=N): calls block until N ms after the hang began, then answer normally."""
    key = client.create_key()
    start = time.monotonic()
    injector.hang("hsm-a", ms=300)
    dk = client.generate_data_key(key.key_id)
    assert time.monotonic() - start >= 0.25  # wall clock vs monotonic: a little slack
    assert client.unwrap(dk.wrapped) == dk.plaintext


# -- faults users meet -----------------------------------------------------------------------


def test_lose_token_and_heal_through_the_client(one: Harness, client: hsm.Client,
                                                injector: FaultInjector) -> None:
    """With the token directory gone calls fail transiently; heal puts it back and the
    client recovers (by re-initializing the module)."""
    key = client.create_key()
    dk = client.generate_data_key(key.key_id, CONTEXT)
    lost = injector.lose_token("hsm-a")
    assert lost.exists()
    assert not one.members[0].token_dir.exists()
    assert injector.lose_token("hsm-a") == lost  # already lost: nothing to do
    for _ in range(2):
        with pytest.raises(hsm.HSMUnavailable) as caught:
            client.unwrap(dk.wrapped, CONTEXT)
        assert caught.value.transient
    report = injector.heal("hsm-a")
    assert (report.fault_cleared, report.token_restored) == (False, True)
    assert one.members[0].token_dir.is_dir()
    assert client.unwrap(dk.wrapped, CONTEXT) == dk.plaintext


def test_module_finalized_under_the_client(client: hsm.Client) -> None:
    """finalize_under: the next call fails transiently, the one after recovers."""
    key = client.create_key()
    blob = client.wrap(key.key_id, b"f" * 32)
    faults_impl.finalize_under(_module(client))
    with pytest.raises(hsm.HSMUnavailable):
        client.unwrap(blob)
    assert client.unwrap(blob) == b"f" * 32


# -- counting calls ---------------------------------------------------------------------------


def test_count_calls_counts_the_login_of_a_client_open(one: Harness,
                                                       injector: FaultInjector) -> None:
    """count_calls("C_Login"): a client opened on the member logs in once and nothing else
    is counted; stop_counting returns the counts and ends counting."""
    injector.count_calls("hsm-a", "C_Login")
    assert injector.calls("hsm-a") == Counter()
    with _open(one.config_path) as opened:
        opened.generate_random(16)
    assert injector.calls("hsm-a") == Counter({"C_Login": 1})
    assert injector.stop_counting("hsm-a") == Counter({"C_Login": 1})
    assert not one.members[0].count_control.exists()
    with _open(one.config_path) as opened:
        opened.generate_random(16)
    assert injector.calls("hsm-a") == Counter()


def test_counting_every_call_restarts_from_zero_and_sees_faulted_calls(
    one: Harness, client: hsm.Client, injector: FaultInjector
) -> None:
    """count_calls() with no list counts every function; counting again starts from zero;
    a call the shim fails is counted too (counted before any fault applies)."""
    injector.count_calls("hsm-a")
    client.generate_random(16)
    counted = injector.calls("hsm-a")
    assert counted["C_GenerateRandom"] == 1
    injector.count_calls("hsm-a", ["GenerateRandom"])
    assert injector.calls("hsm-a") == Counter()
    injector.inject("hsm-a", "DEVICE_ERROR", calls="C_GenerateRandom")
    with pytest.raises(hsm.HSMUnavailable):
        client.generate_random(16)
    injector.heal("hsm-a")
    assert injector.calls("hsm-a")["C_GenerateRandom"] >= 1
    assert set(injector.calls("hsm-a")) == {"C_GenerateRandom"}
    injector.stop_counting("hsm-a")


def test_counting_refuses_what_it_cannot_count(one: Harness, injector: FaultInjector) -> None:
    """An unknown function is refused; so is a member whose shim sidecar names no count
    file (an older harness), with what to do, instead of counting nothing."""
    with pytest.raises(HarnessError, match="unknown PKCS#11 function"):
        injector.count_calls("hsm-a", "C_Nope")
    conf = shim_impl.sidecar(one.members[0].module)
    conf.write_text("".join(line for line in conf.read_text().splitlines(keepends=True)
                            if not line.startswith("count=")))
    with pytest.raises(HarnessError, match=r"older hsm.*hsm harness down --dir"):
        injector.count_calls("hsm-a", "C_Login")
    assert not one.members[0].count_control.exists()


# -- the control file and the API -------------------------------------------------------------


def test_control_file_format_and_atomic_writes(one: Harness, injector: FaultInjector) -> None:
    """The control file says what was asked in key=value lines; writes leave no temp files;
    heal removes it."""
    member = one.members[0]
    written = injector.inject("hsm-a", "device_removed", delay_ms=25, calls="Encrypt, C_Decrypt")
    text = member.fault_control.read_text()
    assert "error=0x32\n" in text
    assert "delay_ms=25\n" in text
    assert "calls=C_Encrypt,C_Decrypt\n" in text
    assert Fault.parse(text) == written == injector.fault("hsm-a")
    assert written.as_dict()["error_name"] == "DEVICE_REMOVED"
    for code in range(1, 40):
        injector.inject("hsm-a", code)
    assert _control_files(member.directory) == ["fault"]
    hung = injector.hang("hsm-a", ms=60_000)
    assert hung.hang
    assert hung.until_ms is not None
    assert not hung.expired
    assert "calls hang" in hung.describe()
    report = injector.heal("hsm-a")
    assert report.as_dict() == {"member": "hsm-a", "fault_cleared": True,
                                "token_restored": False}
    assert _control_files(member.directory) == []
    assert injector.fault("hsm-a") is None
    assert injector.heal("hsm-a").fault_cleared is False


def test_bad_fault_requests_are_refused(injector: FaultInjector) -> None:
    """Unknown codes, members, functions; no effect at all; negative times."""
    cases: list[tuple[Any, dict[str, Any], str]] = [
        ("NOT_A_CODE", {}, "unknown CKR code"),
        (0, {}, "out of range"),
        ("0x100000000", {}, "out of range"),
        (None, {}, "error code, a delay"),
        ("DEVICE_ERROR", {"delay_ms": -1}, "delay_ms"),
        ("DEVICE_ERROR", {"calls": "C_Frobnicate"}, "unknown PKCS#11 function"),
        ("DEVICE_ERROR", {"calls": "C_GetFunctionList"}, "shim's own"),
        ("DEVICE_ERROR", {"calls": " , "}, "no PKCS#11 function"),
    ]
    for error, kwargs, message in cases:
        with pytest.raises(HarnessError, match=message):
            injector.inject("hsm-a", error, **kwargs)
    with pytest.raises(HarnessError, match="no harness member named 'hsm-z'"):
        injector.inject("hsm-z", "DEVICE_ERROR")
    with pytest.raises(HarnessError, match="0 ms"):
        injector.hang("hsm-a", ms=0)
    assert faults_impl.ckr_code("CKR_SESSION_CLOSED") == 0xB0
    assert faults_impl.ckr_code("0xe0") == faults_impl.ckr_code(224) == 0xE0
    assert faults_impl.parse_calls("*") == ("*",)
    assert faults_impl.parse_calls(["WrapKey", "C_WrapKey"]) == ("C_WrapKey",)


def test_for_config_finds_the_harness(one: Harness, tmp_path: Path) -> None:
    """The injector for an hsm.toml is the harness holding it; any other config is refused."""
    assert FaultInjector.for_config(one.config_path).harness == one
    other = tmp_path / "elsewhere" / "hsm.toml"
    other.parent.mkdir()
    other.write_text(one.config_path.read_text())
    with pytest.raises(HarnessError, match="not a harness"):
        FaultInjector.for_config(other)
    with pytest.raises(HarnessError, match="does not exist"):
        FaultInjector.for_config(tmp_path / "none.toml")


# -- building -------------------------------------------------------------------------------


def test_the_build_is_cached_by_source_hash(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The shim is compiled once per source (and build command); a changed source rebuilds."""
    monkeypatch.setenv("HSM_SHIM_CACHE", str(tmp_path / "cache"))
    first = shim_impl.compiled_shim()
    stamp = first.stat().st_mtime_ns
    assert shim_impl.compiled_shim() == first
    assert first.stat().st_mtime_ns == stamp
    source = shim_impl._shim_source()
    monkeypatch.setattr(shim_impl, "_shim_source", lambda: source + b"\n/* changed */\n")
    second = shim_impl.compiled_shim()
    assert second != first
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted(
        [first.name, second.name])  # no temporary build directory left behind


def test_without_a_compiler_the_harness_falls_back_or_refuses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """No cc: by default a warning and SoftHSM loaded directly; faults=True refuses, naming
    the packages; a missing header is reported the same way."""
    monkeypatch.setenv("HSM_SHIM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    with caplog.at_level(logging.WARNING, logger="hsm.testing"):
        harness = harness_up(tmp_path / "plain", 1)
    assert "fault injection unavailable" in caplog.text
    member = harness.members[0]
    assert not harness.faults
    assert member.module == member.softhsm_module
    assert json.loads((harness.directory / "harness.json").read_text())["faults"] is False
    with pytest.raises(HarnessError, match="without fault injection"):
        FaultInjector(harness).inject("hsm-a", "DEVICE_ERROR")
    FaultInjector(harness).lose_token("hsm-a")  # token faults need no shim
    assert FaultInjector(harness).heal("hsm-a").token_restored
    with pytest.raises(HarnessError, match=r"apt-get install libp11-kit-dev gcc"):
        harness_up(tmp_path / "strict", 1, faults=True)
    assert not (tmp_path / "strict").exists()
    monkeypatch.delenv("CC")
    monkeypatch.setenv("HSM_PKCS11_INCLUDE", str(tmp_path / "no-include"))
    with pytest.raises(HarnessError, match=r"pkcs11\.h.*apt-get install libp11-kit-dev"):
        shim_impl.compiled_shim()


def test_reuse_must_match_an_explicit_faults_choice(tmp_path: Path) -> None:
    """A harness without faults is not handed out to faults=True, nor the reverse."""
    plain = harness_up(tmp_path / "h", 1, faults=False)
    assert not plain.faults
    assert harness_up(tmp_path / "h", 1) == plain
    assert harness_up(tmp_path / "h", 1, faults=False) == plain
    with pytest.raises(HarnessError, match="without fault injection"):
        harness_up(tmp_path / "h", 1, faults=True)


# -- threads ----------------------------------------------------------------------------------

_STRESS = textwrap.dedent(
    """\
    import json, sys, threading, time
    import hsm
    from hsm.testing import FaultInjector

    config, seconds, threads = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    injector = FaultInjector.for_config(config)
    counts, problems, lock = {"pairs": 0, "toggles": 0}, [], threading.Lock()
    with hsm.open(config) as client:
        key = client.create_key().key_id
        stop = time.monotonic() + seconds

        def worker(n):
            done = 0
            try:
                while time.monotonic() < stop:
                    ctx = {"t": str(n)}
                    dk = client.generate_data_key(key, ctx)
                    if client.unwrap(dk.wrapped, ctx) != dk.plaintext:
                        raise AssertionError("unwrapped other bytes")
                    done += 1
            except Exception as exc:
                with lock:
                    problems.append(f"{type(exc).__name__}: {exc}")
            with lock:
                counts["pairs"] += done

        pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
        for t in pool:
            t.start()
        while time.monotonic() < stop:  # the control file changes under the threads
            injector.inject("hsm-a", delay_ms=1)
            time.sleep(0.02)
            injector.heal("hsm-a")
            time.sleep(0.02)
            counts["toggles"] += 1
        for t in pool:
            t.join()
    print(json.dumps({"counts": counts, "problems": problems[:5]}))
    sys.exit(1 if problems else 0)
    """
)


def test_the_shim_is_thread_safe(one: Harness, tmp_path: Path) -> None:
    """4 threads x 2 s of generate_data_key + unwrap through the shim while its control file
    keeps changing: the process survives and every result is right."""
    script = tmp_path / "shim_stress.py"
    script.write_text(_STRESS)
    run = subprocess.run([sys.executable, str(script), str(one.config_path), "2", "4"],
                         capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, f"exit {run.returncode}: {run.stdout[-2000:]} {run.stderr[-2000:]}"
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["problems"] == []
    assert report["counts"]["pairs"] > 100
    assert report["counts"]["toggles"] > 5


# -- the CLI ----------------------------------------------------------------------------------


def _run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def _ok(result: Result) -> dict[str, Any]:
    assert result.exit_code == 0, (result.stdout, result.stderr)
    data = json.loads(result.stdout)
    assert isinstance(data, dict)
    return data


def _one_error_line(result: Result, code: int = 1) -> str:
    assert result.exit_code == code, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    if code == 1:
        lines = result.stderr.splitlines()
        assert len(lines) == 1, lines
        assert lines[0].startswith("hsm: error: ")
        return lines[0]
    return result.stderr


def test_cli_inject_heal_hang_lose_token_status(one: Harness, client: hsm.Client) -> None:
    """hsm fault inject/hang/lose-token/heal/status act on the harness the config names, and
    the client in this process sees them at its next call."""
    cfg = str(one.config_path)
    key = client.create_key()
    dk = client.generate_data_key(key.key_id)

    injected = _ok(_run("fault", "inject", "hsm-a", "--error", "DEVICE_ERROR", "--config", cfg,
                        "--json"))
    assert injected["member"] == "hsm-a"
    assert injected["fault"]["error"] == "0x30"
    assert injected["fault"]["error_name"] == "DEVICE_ERROR"
    with pytest.raises(hsm.HSMUnavailable) as caught:
        client.unwrap(dk.wrapped)
    assert caught.value.reason == "device_error"
    status = _ok(_run("--config", cfg, "--json", "fault", "status"))
    assert status["members"][0]["fault"]["error"] == "0x30"
    assert status["members"][0]["faults_available"] is True
    healed = _ok(_run("fault", "heal", "hsm-a", "--config", cfg, "--json"))
    assert healed == {"member": "hsm-a", "fault_cleared": True, "token_restored": False}
    assert client.unwrap(dk.wrapped) == dk.plaintext

    delayed = _ok(_run("fault", "inject", "hsm-a", "--error", "0xB3", "--delay-ms", "5",
                       "--calls", "C_Decrypt", "--config", cfg, "--json"))
    assert delayed["fault"]["delay_ms"] == 5
    assert delayed["fault"]["calls"] == ["C_Decrypt"]
    with pytest.raises(hsm.HSMUnavailable, match="SessionHandleInvalid"):
        client.unwrap(dk.wrapped)

    hung = _ok(_run("fault", "hang", "hsm-a", "--ms", "100", "--config", cfg, "--json"))
    assert hung["fault"]["hang"] is True
    assert hung["fault"]["until_ms"] is not None
    time.sleep(0.15)
    assert client.unwrap(dk.wrapped) == dk.plaintext  # the hang ran out by itself

    lost = _ok(_run("fault", "lose-token", "hsm-a", "--config", cfg, "--json"))
    assert lost["token_lost"] is True
    assert not one.members[0].token_dir.exists()
    text = _run("fault", "status", "--config", cfg)
    assert text.exit_code == 0
    assert "token lost" in text.stdout
    healed = _ok(_run("fault", "heal", "hsm-a", "--config", cfg, "--json"))
    assert healed["token_restored"] is True
    assert client.unwrap(dk.wrapped) == dk.plaintext

    human = _run("fault", "inject", "hsm-a", "--error", "FUNCTION_FAILED", "--config", cfg)
    assert human.exit_code == 0
    assert "CKR_FUNCTION_FAILED (0x6)" in human.stdout
    assert "hsm fault heal hsm-a" in human.stdout
    assert _run("fault", "heal", "hsm-a", "--config", cfg).stdout == "hsm-a: fault cleared\n"
    assert _run("fault", "heal", "hsm-a", "--config", cfg).stdout == "hsm-a: nothing to heal\n"
    assert _run("fault", "status", "--config", cfg).stdout == "hsm-a: healthy\n"


def test_cli_errors(one: Harness, tmp_path: Path) -> None:
    """Unknown member, a config outside a harness: one error line, exit 1. Bad codes,
    functions or no fault at all: usage errors, exit 2."""
    cfg = str(one.config_path)
    line = _one_error_line(_run("fault", "inject", "nope", "--error", "DEVICE_ERROR",
                                "--config", cfg))
    assert "no harness member named 'nope'" in line
    assert "hsm-a" in line
    other = tmp_path / "hsm.toml"
    other.write_text(one.config_path.read_text())
    line = _one_error_line(_run("fault", "heal", "hsm-a", "--config", str(other)))
    assert "not a harness" in line
    line = _one_error_line(_run("fault", "status", "--config", str(tmp_path / "none.toml")))
    assert "does not exist" in line
    assert "unknown CKR code" in _one_error_line(
        _run("fault", "inject", "hsm-a", "--error", "BROKEN", "--config", cfg), 2)
    assert "unknown PKCS#11 function" in _one_error_line(
        _run("fault", "inject", "hsm-a", "--error", "0x30", "--calls", "C_Nope", "--config", cfg),
        2)
    assert "--error, --delay-ms" in _one_error_line(
        _run("fault", "inject", "hsm-a", "--config", cfg), 2)
    assert not one.members[0].fault_control.exists()


def test_a_fault_set_by_another_process_reaches_this_one(one: Harness,
                                                         client: hsm.Client) -> None:
    """`hsm fault` run as its own process affects the client here at its next call."""
    key = client.create_key()
    blob = client.wrap(key.key_id, bytes(32))

    def hsm_cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "hsm.cli", "fault", *args, "--config",
                               str(one.config_path)], capture_output=True, text=True,
                              timeout=60, check=False)

    done = hsm_cli("inject", "hsm-a", "--error", "TOKEN_NOT_PRESENT", "--calls", "C_DecryptInit")
    assert done.returncode == 0, done.stderr
    with pytest.raises(hsm.HSMUnavailable) as caught:
        client.unwrap(blob)
    assert caught.value.reason == "token_not_present"
    done = hsm_cli("heal", "hsm-a")
    assert done.returncode == 0, done.stderr
    assert client.unwrap(blob) == bytes(32)


_LOAD = textwrap.dedent(
    """\
    import sys, pkcs11
    try:
        pkcs11.lib(sys.argv[1])
    except pkcs11.PKCS11Error:
        sys.exit(3)
    """
)


def test_a_misconfigured_shim_refuses_to_load_and_says_why(one: Harness,
                                                           tmp_path: Path) -> None:
    """No sidecar, a sidecar naming the shim itself or a missing module: loading fails with
    a PKCS#11 error and one 'hsm p11shim:' line on stderr, never a hang or a crash."""
    shim = tmp_path / "libp11shim-x.so"
    shim.write_bytes(one.members[0].module.read_bytes())
    cases = [
        (None, "can't read its configuration"),
        (f"module={shim}\n", "other than the shim itself"),
        (f"module={tmp_path / 'none.so'}\ncontrol={tmp_path / 'fault'}\n",
         "can't load the real module"),
        ("control=/x\n", "no module= line"),
    ]
    for sidecar, message in cases:
        conf = shim_impl.sidecar(shim)
        conf.unlink(missing_ok=True)
        if sidecar is not None:
            conf.write_text(sidecar)
        run = subprocess.run([sys.executable, "-c", _LOAD, str(shim)], capture_output=True,
                             text=True, timeout=60, check=False)
        assert run.returncode == 3, (sidecar, run.returncode, run.stderr)
        assert run.stderr.startswith("hsm p11shim: ")
        assert message in run.stderr
