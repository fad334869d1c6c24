"""The ``hsm`` command line, driven with click's CliRunner and as a real subprocess."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result

from hsm.cli import cli
from hsm.cli._common import _parse_context
from hsm.testing import Harness, harness_down, harness_up

# -- helpers ---------------------------------------------------------------------------------


def run(*args: str, input: str | bytes | None = None) -> Result:
    """Run ``hsm ARGS`` in-process; stdout and stderr are kept apart."""
    return CliRunner().invoke(cli, list(args), input=input)


def ok_json(result: Result) -> dict[str, Any]:
    """Assert success and that stdout is exactly one JSON object; return it."""
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert isinstance(data, dict)
    assert result.stdout.count("\n") == 1
    return data


def failed(result: Result, code: int = 1) -> str:
    """Assert a controlled failure (no traceback) with ``code``; return the stderr text."""
    assert result.exit_code == code, (result.stdout, result.stderr, result.exception)
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.stderr
    return result.stderr


def one_error_line(result: Result) -> str:
    """Assert exit 1, empty stdout and exactly one ``hsm: error:`` line on stderr."""
    stderr = failed(result, 1)
    assert result.stdout == ""
    lines = stderr.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("hsm: error: ")
    return lines[0]


def chunks(text: str, size: int) -> list[str]:
    """``text`` cut into pieces of ``size`` characters."""
    return [text[i:i + size] for i in range(0, len(text), size)]


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No $HSM_CONFIG from the outside and no ./hsm.toml in the working directory."""
    monkeypatch.delenv("HSM_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    """A one-member SoftHSM harness shared by this module's non-destructive tests."""
    directory = tmp_path_factory.mktemp("cli") / "h"
    built = harness_up(directory, members=1)
    yield built
    harness_down(directory)


@pytest.fixture(scope="module")
def config(harness: Harness) -> str:
    """The shared harness's hsm.toml."""
    return str(harness.config_path)


@pytest.fixture(scope="module")
def key_id(config: str) -> str:
    """A master key created through ``hsm key create``."""
    return str(ok_json(run("key", "create", "--config", config, "--json"))["key_id"])


def wrap(config: str, key_id: str, material: bytes, *context: str) -> bytes:
    """Seal ``material`` with ``hsm wrap`` and return the blob's bytes."""
    args = [arg for item in context for arg in ("--context", item)]
    result = run("wrap", "--config", config, "--key", key_id, *args,
                 input=base64.b64encode(material))
    assert result.exit_code == 0, result.stderr
    return base64.b64decode(result.stdout)


# -- usage errors (exit 2): no HSM needed ------------------------------------------------------


@pytest.mark.parametrize(("item", "message"), [
    ("tenant", "is not KEY=VALUE"),
    ("=acme", "has an empty key"),
])
def test_malformed_context_item_is_a_usage_error(item: str, message: str) -> None:
    """A --context item without '=' or with an empty key exits 2 naming the problem."""
    stderr = failed(run("unwrap", "--context", item, input="AAAA"), 2)
    assert message in stderr
    assert "--context" in stderr


def test_repeated_context_key_is_a_usage_error() -> None:
    """The same --context key given twice exits 2."""
    stderr = failed(run("data-key", "--key", "k", "--context", "a=1", "--context", "a=2"), 2)
    assert "'a' is given twice" in stderr


def test_context_value_is_split_on_the_first_equals_sign() -> None:
    """A --context value may itself contain '=' (the item is split on the first one)."""
    ctx = click.Context(cli)
    param = click.Option(["--context"], multiple=True)
    assert _parse_context(ctx, param, ("a=b=c", "d=", "e==")) == {"a": "b=c", "d": "", "e": "="}


@pytest.mark.parametrize("args", [
    ["data-key"],
    ["wrap"],
    ["harness", "up"],
    ["harness", "up", "--dir", "x", "--members", "0"],
    ["no-such-command"],
    ["key", "create", "--no-such-option"],
])
def test_usage_errors_exit_2(args: list[str]) -> None:
    """Missing required options, bad values and unknown commands exit 2 with a usage message."""
    stderr = failed(run(*args), 2)
    assert "Usage:" in stderr or "Error:" in stderr


@pytest.mark.parametrize("command", [
    ["status"], ["key", "create"], ["key", "list"], ["data-key"], ["wrap"], ["unwrap"],
    ["harness", "up"], ["harness", "down"],
])
def test_every_command_takes_config_and_json(command: list[str]) -> None:
    """Every command's help lists --config and --json."""
    result = run(*command, "--help")
    assert result.exit_code == 0
    assert "--config" in result.stdout
    assert "--json" in result.stdout


# -- configuration problems (exit 1, one line) -------------------------------------------------


def test_missing_config_file_is_one_error_line(tmp_path: Path) -> None:
    """A --config path that does not exist exits 1 with one line naming the file."""
    missing = tmp_path / "nope.toml"
    line = one_error_line(run("key", "list", "--config", str(missing), "--json"))
    assert str(missing) in line
    assert "does not exist" in line


def test_no_config_anywhere_is_one_error_line() -> None:
    """Without --config, $HSM_CONFIG or ./hsm.toml a command exits 1 saying where to look."""
    line = one_error_line(run("status"))
    assert "HSM_CONFIG" in line


def test_unreadable_config_is_one_error_line(tmp_path: Path) -> None:
    """A config that is not valid TOML exits 1 with one line, not a traceback."""
    bad = tmp_path / "hsm.toml"
    bad.write_text("[[member]\nname=", encoding="utf-8")
    line = one_error_line(run("key", "list"))
    assert "not valid TOML" in line


def test_config_is_found_through_the_environment(
    config: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """$HSM_CONFIG is used when --config is not given."""
    monkeypatch.setenv("HSM_CONFIG", config)
    assert "keys" in ok_json(run("key", "list", "--json"))


# -- keys and data keys on a real SoftHSM --------------------------------------------------------


def test_key_create_and_list(config: str, key_id: str) -> None:
    """'key create' returns id, version and KCV, and 'key list' shows that key."""
    created = ok_json(run("key", "create", "--config", config, "--json"))
    assert set(created) == {"key_id", "version", "kcv"}
    assert created["version"] == 1
    listed = ok_json(run("key", "list", "--config", config, "--json"))
    assert {**created, "members": ["hsm-a"]} in listed["keys"]
    assert any(k["key_id"] == key_id for k in listed["keys"])


def test_key_list_human_output_is_a_table(config: str, key_id: str) -> None:
    """Without --json, 'key list' prints a header and one line per key version."""
    result = run("key", "list", "--config", config)
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["KEY", "ID", "VERSION", "KCV", "MEMBERS"]
    assert any(line.startswith(key_id) for line in lines[1:])


def test_json_flag_works_on_the_group_too(config: str) -> None:
    """'hsm --json --config C key list' is the same as putting the options on the command."""
    assert "keys" in ok_json(run("--json", "--config", config, "key", "list"))


def test_data_key_round_trip_and_wrong_context(config: str, key_id: str) -> None:
    """data-key then unwrap with the same context gives the key back; another context exits 1."""
    made = ok_json(run("data-key", "--config", config, "--key", key_id,
                       "--context", "tenant=acme", "--context", "purpose=a=b", "--json"))
    assert set(made) == {"key_id", "version", "plaintext", "wrapped"}
    assert made["key_id"] == key_id
    assert len(base64.b64decode(made["plaintext"])) == 32

    opened = ok_json(run("unwrap", "--config", config, "--context", "purpose=a=b",
                         "--context", "tenant=acme", "--json", input=made["wrapped"] + "\n"))
    assert opened == {"plaintext": made["plaintext"]}

    for wrong in (["--context", "tenant=other", "--context", "purpose=a=b"],
                  ["--context", "tenant=acme"], []):
        line = one_error_line(run("unwrap", "--config", config, *wrong, "--json",
                                  input=made["wrapped"]))
        assert line.startswith("hsm: error: ciphertext does not verify (")
        assert "another context" in line


def test_data_key_human_output(config: str, key_id: str) -> None:
    """Without --json, data-key prints key id, version, plaintext and wrapped on labelled lines."""
    result = run("data-key", "--config", config, "--key", key_id)
    assert result.exit_code == 0, result.stderr
    fields = dict(line.split(":", 1) for line in result.stdout.splitlines())
    assert set(fields) == {"key_id", "version", "plaintext", "wrapped"}
    assert fields["key_id"].strip() == key_id


def test_wrap_unwrap_via_stdin(config: str, key_id: str) -> None:
    """wrap reads base64 key material on stdin; unwrap reads the blob and prints the material."""
    material = os.urandom(48)
    blob = wrap(config, key_id, material, "app=x")
    spread = "\n  ".join(chunks(base64.b64encode(blob).decode(), 10)) + "\n\n"
    result = run("unwrap", "--config", config, "--context", "app=x", input=spread)
    assert result.exit_code == 0, result.stderr
    assert base64.b64decode(result.stdout) == material
    assert result.stdout.strip() == base64.b64encode(material).decode()


def test_wrap_json(config: str, key_id: str) -> None:
    """wrap --json prints key_id, version and the base64 blob."""
    result = run("wrap", "--config", config, "--key", key_id, "--json",
                 input="  " + base64.b64encode(b"k" * 16).decode() + "  \n")
    data = ok_json(result)
    assert data["key_id"] == key_id
    assert data["version"] == 1
    assert base64.b64decode(data["wrapped"])[:4] == b"HSMK"


@pytest.mark.parametrize("command", ["wrap", "unwrap"])
@pytest.mark.parametrize("stdin", ["not base64!", "QUJD=x", "", "  \n"])
def test_bad_base64_on_stdin_is_one_error_line(
    config: str, key_id: str, command: str, stdin: str,
) -> None:
    """wrap and unwrap exit 1 with one line when stdin is not base64 or is empty."""
    extra = ["--key", key_id] if command == "wrap" else []
    line = one_error_line(run(command, "--config", config, *extra, input=stdin))
    assert "base64" in line


@pytest.mark.parametrize("blob", [b"hello", b"XXXX" + bytes(60), b"HSMK\x02" + bytes(60)])
def test_malformed_blob_is_one_error_line(config: str, blob: bytes) -> None:
    """unwrap of base64 that is not a sealed blob exits 1 saying the blob is malformed."""
    line = one_error_line(run("unwrap", "--config", config, input=base64.b64encode(blob)))
    assert "malformed input: " in line


def test_tampered_blob_does_not_verify(config: str, key_id: str) -> None:
    """A blob with one ciphertext byte flipped exits 1: the ciphertext does not verify."""
    blob = bytearray(wrap(config, key_id, b"secret-key-material"))
    blob[-20] ^= 1
    line = one_error_line(run("unwrap", "--config", config, input=base64.b64encode(blob)))
    assert "does not verify" in line
    assert "altered" in line


def test_unknown_key_id_is_one_error_line(config: str) -> None:
    """data-key and wrap with a key id that is not on the HSM exit 1 naming the key."""
    missing = str(uuid.uuid4())
    line = one_error_line(run("data-key", "--config", config, "--key", missing))
    assert missing in line
    line = one_error_line(run("wrap", "--config", config, "--key", missing,
                              input=base64.b64encode(b"x" * 32)))
    assert missing in line
    line = one_error_line(run("data-key", "--config", config, "--key", "not-a-uuid", "--json"))
    assert "not a UUID" in line


def test_blob_of_a_deleted_or_foreign_key_is_one_error_line(config: str) -> None:
    """unwrap of a well-formed blob naming a key the HSM lacks exits 1 naming that key."""
    from hsm.keys.blob import SealedBlob

    foreign = uuid.uuid4()
    blob = SealedBlob.header_for(foreign.bytes, 1, bytes(12)) + bytes(48)
    line = one_error_line(run("unwrap", "--config", config, input=base64.b64encode(blob)))
    assert str(foreign) in line


# -- status ---------------------------------------------------------------------------------------


def test_status_json_lists_members_with_mechanisms(tmp_path: Path) -> None:
    """status --json lists every member, reachable, with its token and probed mechanisms."""
    two = harness_up(tmp_path / "two", members=2)
    try:
        data = ok_json(run("status", "--config", str(two.config_path), "--json"))
    finally:
        harness_down(tmp_path / "two")
    assert set(data) == {"members"}
    assert [m["name"] for m in data["members"]] == [m.name for m in two.members]
    for member, expected in zip(data["members"], two.members, strict=True):
        assert member["reachable"] is True
        assert member["token_label"] == expected.token_label
        assert member["token_serial"] == expected.serial
        assert member["mechanisms"]["aes_gcm"] is True
        assert member["keys"] == 0
        assert member["error"] == ""


def test_status_human_output(config: str) -> None:
    """Without --json (and not on a terminal) status prints one block of lines per member."""
    result = run("status", "--config", config)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("hsm-a: healthy\n")
    assert "mechanisms:" in result.stdout


def test_status_on_a_terminal_is_a_table(config: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a terminal, status prints a rich table of the members."""
    monkeypatch.setattr("hsm.cli.status.stdout_is_terminal", lambda: True)
    result = run("status", "--config", config)
    assert result.exit_code == 0, result.stderr
    assert "HSM members" in result.stdout
    assert "hsm-a" in result.stdout
    assert "healthy" in result.stdout


def test_status_reports_an_unreachable_member_and_exits_0(tmp_path: Path) -> None:
    """status reports every member; one unreachable member is shown, not fatal (the
    cluster fails over around it); with none reachable it exits 1 with one line."""
    two = harness_up(tmp_path / "two", members=2)
    try:
        text = two.config_path.read_text(encoding="utf-8")
        broken = tmp_path / "broken.toml"
        broken.write_text(text.replace('token = "hsm-a"', 'token = "gone"'), encoding="utf-8")
        result = run("status", "--config", str(broken), "--json")
        dead = tmp_path / "dead.toml"
        dead.write_text(text.replace('token = "hsm-a"', 'token = "gone"')
                        .replace('token = "hsm-b"', 'token = "gone"'), encoding="utf-8")
        none = run("status", "--config", str(dead), "--json")
    finally:
        harness_down(tmp_path / "two")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert [m["reachable"] for m in report["members"]] == [False, True]
    assert "'gone'" in report["members"][0]["error"]
    assert report["members"][0]["state"] == "down"
    assert none.exit_code == 1
    lines = none.stderr.splitlines()
    assert len(lines) == 1  # one line that names every member and why
    assert lines[0].startswith("hsm: error: no member could be opened (hsm-a: ")
    assert "hsm-b: " in lines[0]
    assert "'gone'" in lines[0]


# -- PINs ----------------------------------------------------------------------------------------


def test_wrong_pin_is_one_line_that_never_shows_a_pin(tmp_path: Path) -> None:
    """With a wrong PIN a command exits 1 with one line about the PIN, showing no PIN."""
    built = harness_up(tmp_path / "h", members=1)
    try:
        right = built.pin_file.read_text(encoding="utf-8").strip()
        wrong = "0" * 8 + "wrongpin"
        built.pin_file.write_text(wrong + "\n", encoding="utf-8")
        cfg = str(built.config_path)
        results = [run("key", "list", "--config", cfg),
                   run("data-key", "--config", cfg, "--key", str(uuid.uuid4()), "--json")]
        for result in results:
            line = one_error_line(result)
            assert "PIN" in line
            assert "hsm-a" in line
            for pin in (wrong, right):
                assert pin not in result.stdout + result.stderr

        status = run("status", "--config", cfg, "--json")
        assert status.exit_code == 1
        line = one_error_line(status)
        assert "PIN" in line
        assert "hsm-a" in line
        for pin in (wrong, right):
            assert pin not in status.stdout + status.stderr
    finally:
        harness_down(tmp_path / "h")


def test_missing_pin_file_is_one_error_line(tmp_path: Path) -> None:
    """A PIN file that does not exist exits 1 with one line naming the file."""
    built = harness_up(tmp_path / "h", members=1)
    try:
        built.pin_file.unlink()
        line = one_error_line(run("key", "create", "--config", str(built.config_path)))
        assert str(built.pin_file) in line
    finally:
        harness_down(tmp_path / "h")


def test_pin_written_into_the_config_is_never_echoed(config: str, tmp_path: Path) -> None:
    """A config holding a PIN itself is refused with one line that does not repeat it."""
    text = Path(config).read_text(encoding="utf-8")
    inline = tmp_path / "inline.toml"
    start = text.index('pin = "')
    end = text.index("\n", start)
    inline.write_text(text[:start] + 'pin = "s3cr3t-pin-value"' + text[end:], encoding="utf-8")
    for args in (["key", "list"], ["status", "--json"]):
        result = run(*args, "--config", str(inline))
        line = one_error_line(result)
        assert "pin must be env:VAR, file:PATH or prompt" in line
        assert "s3cr3t" not in result.stdout + result.stderr


# -- harness --------------------------------------------------------------------------------------


def test_harness_up_and_down(tmp_path: Path) -> None:
    """harness up prints a working config; harness down removes the directory."""
    directory = tmp_path / "made"
    up = ok_json(run("harness", "up", "--dir", str(directory), "--members", "2", "--json"))
    assert up["members"] == ["hsm-a", "hsm-b"]
    assert Path(up["config"]).is_file()
    status = ok_json(run("status", "--config", up["config"], "--json"))
    assert [m["reachable"] for m in status["members"]] == [True, True]

    human = run("harness", "up", "--dir", str(directory), "--members", "2")
    assert human.stdout == up["config"] + "\n"  # re-used, path only

    down = ok_json(run("harness", "down", "--dir", str(directory), "--json"))
    assert down == {"removed": str(directory)}
    assert not directory.exists()


def test_harness_down_refuses_other_directories(tmp_path: Path) -> None:
    """harness down on a directory that is not a harness exits 1 and removes nothing."""
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "file").write_text("x", encoding="utf-8")
    one_error_line(run("harness", "down", "--dir", str(tmp_path / "keep")))
    assert (tmp_path / "keep" / "file").exists()


# -- a real process -------------------------------------------------------------------------------


def _hsm(*args: str, config: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "HSM_CONFIG": config}
    return subprocess.run([sys.executable, "-m", "hsm.cli", *args], input=stdin, env=env,
                          capture_output=True, timeout=60, check=False)


def test_subprocess_round_trip_and_errors(config: str, key_id: str) -> None:
    """As a real process: wrap | unwrap round-trips, a wrong context is one stderr line."""
    material = base64.b64encode(os.urandom(32))
    wrapped = _hsm("wrap", "--key", key_id, "--context", "k=v", config=config, stdin=material)
    assert wrapped.returncode == 0, wrapped.stderr
    assert wrapped.stderr == b""
    opened = _hsm("unwrap", "--context", "k=v", config=config, stdin=wrapped.stdout)
    assert opened.returncode == 0, opened.stderr
    assert opened.stdout.strip() == material

    wrong = _hsm("unwrap", "--context", "k=w", "--json", config=config, stdin=wrapped.stdout)
    assert wrong.returncode == 1
    assert wrong.stdout == b""
    assert wrong.stderr.decode().splitlines() == [
        "hsm: error: ciphertext does not verify (the blob was altered, sealed under another "
        "key, or bound to another context)"
    ]

    usage = _hsm("unwrap", "--context", "novalue", config=config)
    assert usage.returncode == 2
    assert b"Traceback" not in usage.stderr


def test_console_script_reports_missing_config(tmp_path: Path) -> None:
    """The installed 'hsm' script exits 1 with one line when the config file is missing."""
    script = Path(sys.executable).parent / "hsm"
    if not script.exists():
        pytest.skip("the hsm console script is not installed next to this interpreter")
    done = subprocess.run([str(script), "key", "list", "--config", str(tmp_path / "none.toml")],
                          capture_output=True, timeout=60, check=False)
    assert done.returncode == 1
    assert done.stdout == b""
    assert done.stderr.decode().splitlines() == [
        f"hsm: error: config file {tmp_path / 'none.toml'} does not exist"
    ]
