"""``hsm encrypt`` / ``hsm decrypt``: files, pipes, summaries, and what is (not) left behind
when decryption fails."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import threading
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from hsm.cli import cli
from hsm.cli import envelope as envelope_cli
from hsm.keys import KeyInfo
from hsm.testing import Harness

MiB = 1024 * 1024
CTX = ("--context", "tenant=acme", "--context", "purpose=test")

# -- helpers ---------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No $HSM_CONFIG from the outside; every test works in its own directory."""
    monkeypatch.delenv("HSM_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def config(shared_harness: Harness) -> str:
    """The shared one-member harness's hsm.toml."""
    return str(shared_harness.config_path)


@pytest.fixture
def key_id(master_key: KeyInfo) -> str:
    """A master key on the shared harness."""
    return master_key.key_id


def run(*args: str, config: str | None = None, input: bytes | None = None) -> Result:
    """``hsm ARGS`` in-process (with ``--config`` if given); stdout and stderr apart."""
    extra = ["--config", config] if config else []
    return CliRunner().invoke(cli, [*args[:1], *extra, *args[1:]], input=input)


def ok(result: Result) -> Result:
    """Assert success with nothing on stderr."""
    assert result.exit_code == 0, (result.stderr, result.exception)
    assert result.stderr == ""
    return result


def one_error_line(result: Result) -> str:
    """Assert exit 1, empty stdout and exactly one ``hsm: error:`` line; return it."""
    assert result.exit_code == 1, (result.stdout, result.stderr, result.exception)
    assert isinstance(result.exception, SystemExit)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("hsm: error: ")
    return lines[0]


def usage_error(result: Result) -> str:
    """Assert exit 2 without a traceback; return stderr."""
    assert result.exit_code == 2, (result.stdout, result.stderr, result.exception)
    assert "Traceback" not in result.stderr
    return result.stderr


def names(directory: Path) -> set[str]:
    """Every entry of ``directory``, hidden ones (temporary files) included."""
    return {p.name for p in directory.iterdir()}


def encrypted(tmp_path: Path, config: str, key_id: str, data: bytes, *args: str,
              name: str = "data") -> Path:
    """``data`` written to a file and encrypted with ``hsm encrypt ARGS``; the OUT path."""
    src, dst = tmp_path / f"{name}.in", tmp_path / f"{name}.hsm"
    src.write_bytes(data)
    ok(run("encrypt", "--key", key_id, *CTX, *args, str(src), str(dst), config=config))
    return dst


def _hsm(*args: str, config: str, stdin: bytes = b"", **kw: Any,
         ) -> subprocess.CompletedProcess[bytes]:
    """``python -m hsm.cli ARGS`` as a real process."""
    env = {**os.environ, "HSM_CONFIG": config}
    return subprocess.run([sys.executable, "-m", "hsm.cli", *args], input=stdin, env=env,
                          capture_output=True, timeout=120, check=False, **kw)


# -- round trips -----------------------------------------------------------------------------


def test_file_round_trip(tmp_path: Path, config: str, key_id: str) -> None:
    """A 9 MiB file encrypts and decrypts back; no progress bar off a terminal, no
    temporary file left, and the plaintext comes back mode 0600."""
    data = os.urandom(9 * MiB + 123)
    sealed = encrypted(tmp_path, config, key_id, data)
    assert sealed.stat().st_size > len(data)
    assert data[:4096] not in sealed.read_bytes()
    back = tmp_path / "back.bin"
    result = ok(run("decrypt", *CTX, str(sealed), str(back), config=config))
    assert back.read_bytes() == data
    assert stat.S_IMODE(back.stat().st_mode) == 0o600
    assert str(back) in result.stdout
    assert names(tmp_path) == {"data.in", "data.hsm", "back.bin"}


def test_existing_out_is_replaced_on_success(tmp_path: Path, config: str, key_id: str) -> None:
    """A successful run replaces an existing OUT."""
    sealed = encrypted(tmp_path, config, key_id, b"new content")
    out = tmp_path / "out.txt"
    out.write_bytes(b"old content, longer than the new one")
    ok(run("decrypt", *CTX, str(sealed), str(out), config=config))
    assert out.read_bytes() == b"new content"


def test_empty_file_round_trip(tmp_path: Path, config: str, key_id: str) -> None:
    """An empty file is a valid envelope message and decrypts to an empty file."""
    sealed = encrypted(tmp_path, config, key_id, b"")
    back = tmp_path / "back"
    ok(run("decrypt", *CTX, str(sealed), str(back), config=config))
    assert back.read_bytes() == b""


def test_stdin_to_stdout_in_process(config: str, key_id: str) -> None:
    """'-' reads stdin and writes stdout, both binary."""
    data = os.urandom(200_000)
    sealed = ok(run("encrypt", "--key", key_id, *CTX, "-", "-", config=config, input=data))
    assert sealed.stdout_bytes[:4] == b"HSME"
    back = ok(run("decrypt", *CTX, "-", "-", config=config, input=sealed.stdout_bytes))
    assert back.stdout_bytes == data


def test_stdin_to_stdout_through_a_real_process(config: str, key_id: str) -> None:
    """As real processes with pipes: encrypt then decrypt round-trips, stderr stays empty."""
    data = os.urandom(3 * MiB)
    sealed = _hsm("encrypt", "--key", key_id, *CTX, "-", "-", config=config, stdin=data)
    assert sealed.returncode == 0, sealed.stderr
    assert sealed.stderr == b""
    back = _hsm("decrypt", *CTX, "-", "-", config=config, stdin=sealed.stdout)
    assert back.returncode == 0, back.stderr
    assert back.stderr == b""
    assert back.stdout == data

    direct = _hsm("encrypt", "--direct", "--key", key_id, "-", "-", config=config,
                  stdin=b"short secret")
    assert direct.returncode == 0, direct.stderr
    opened = _hsm("decrypt", "--direct", "-", "-", config=config, stdin=direct.stdout)
    assert (opened.returncode, opened.stdout, opened.stderr) == (0, b"short secret", b"")


def test_frame_size_is_used(tmp_path: Path, config: str, key_id: str) -> None:
    """--frame-size sets the frame size recorded in the message and the summary."""
    src, dst = tmp_path / "in", tmp_path / "out"
    src.write_bytes(os.urandom(10_000))
    result = ok(run("encrypt", "--json", "--key", key_id, "--frame-size", "1024", str(src),
                    str(dst), config=config))
    assert json.loads(result.stdout)["frame_size"] == 1024
    back = ok(run("decrypt", "--json", str(dst), str(tmp_path / "back"), config=config))
    assert json.loads(back.stdout)["frame_size"] == 1024
    assert (tmp_path / "back").read_bytes() == src.read_bytes()


def test_streaming_runs_in_constant_memory(tmp_path: Path, config: str, key_id: str) -> None:
    """Encrypting and decrypting 24 MiB never holds more than a few frames in memory."""
    src = tmp_path / "big"
    with src.open("wb") as f:
        for _ in range(24):
            f.write(os.urandom(MiB))
    tracemalloc.start()
    try:
        ok(run("encrypt", "--key", key_id, str(src), str(tmp_path / "big.hsm"), config=config))
        ok(run("decrypt", str(tmp_path / "big.hsm"), str(tmp_path / "back"), config=config))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * MiB, peak  # 24 MiB went through
    assert (tmp_path / "back").stat().st_size == 24 * MiB


# -- --json ----------------------------------------------------------------------------------


def test_json_summaries(tmp_path: Path, config: str, key_id: str) -> None:
    """--json prints one object: key id, version, bytes in and out, seconds, frame size
    (envelope only) and whether it was direct."""
    src = tmp_path / "in"
    src.write_bytes(b"z" * 70_000)
    enc = ok(run("encrypt", "--json", "--key", key_id, *CTX, str(src), str(tmp_path / "e"),
                 config=config))
    assert enc.stdout.count("\n") == 1
    summary = json.loads(enc.stdout)
    assert list(summary) == ["key_id", "version", "bytes_in", "bytes_out", "frame_size",
                             "seconds", "direct"]
    assert summary["key_id"] == key_id
    assert summary["version"] == 1
    assert summary["bytes_in"] == 70_000
    assert summary["bytes_out"] == (tmp_path / "e").stat().st_size
    assert summary["frame_size"] == 65536
    assert isinstance(summary["seconds"], float)
    assert summary["seconds"] >= 0
    assert summary["direct"] is False

    dec = json.loads(ok(run("decrypt", "--json", *CTX, str(tmp_path / "e"),
                            str(tmp_path / "d"), config=config)).stdout)
    assert (dec["key_id"], dec["version"], dec["direct"]) == (key_id, 1, False)
    assert (dec["bytes_in"], dec["bytes_out"]) == (summary["bytes_out"], 70_000)

    small = tmp_path / "small"
    small.write_bytes(b"k" * 32)
    direct = json.loads(ok(run("encrypt", "--direct", "--json", "--key", key_id,
                               str(small), str(tmp_path / "x"), config=config)).stdout)
    assert list(direct) == ["key_id", "version", "bytes_in", "bytes_out", "seconds", "direct"]
    assert (direct["bytes_in"], direct["direct"]) == (32, True)
    assert direct["bytes_out"] == 38 + 32 + 16
    opened = json.loads(ok(run("decrypt", "--direct", "--json", str(tmp_path / "x"),
                               str(tmp_path / "y"), config=config)).stdout)
    assert (opened["bytes_in"], opened["bytes_out"], opened["direct"]) == (86, 32, True)


# -- direct ----------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 4096])
def test_direct_round_trip(tmp_path: Path, config: str, key_id: str, size: int) -> None:
    """--direct encrypts 1 and 4096 bytes inside the HSM; decrypt --direct opens them."""
    data = os.urandom(size)
    sealed = encrypted(tmp_path, config, key_id, data, "--direct")
    assert sealed.read_bytes()[:4] == b"HSMD"
    ok(run("decrypt", "--direct", *CTX, str(sealed), str(tmp_path / "back"), config=config))
    assert (tmp_path / "back").read_bytes() == data


@pytest.mark.parametrize("source", ["file", "stdin"])
def test_direct_over_4096_bytes_points_to_envelope_encryption(
    tmp_path: Path, config: str, key_id: str, source: str,
) -> None:
    """--direct with 4097 bytes exits 1 saying to drop --direct; no OUT is written."""
    data = bytes(4097)
    src = tmp_path / "in"
    src.write_bytes(data)
    args = ("-", str(tmp_path / "out")) if source == "stdin" else (str(src), "out")
    line = one_error_line(run("encrypt", "--direct", "--key", key_id, *args, config=config,
                              input=data if source == "stdin" else None))
    assert "4096" in line
    assert "envelope encryption" in line
    assert "without --direct" in line
    assert names(tmp_path) == {"in"}


def test_direct_empty_input_is_refused(tmp_path: Path, config: str, key_id: str) -> None:
    """--direct with an empty input exits 1."""
    (tmp_path / "empty").write_bytes(b"")
    line = one_error_line(run("encrypt", "--direct", "--key", key_id, "empty", "out",
                              config=config))
    assert "empty" in line


def test_direct_and_envelope_ciphertexts_are_not_confused(tmp_path: Path, config: str,
                                                          key_id: str) -> None:
    """decrypt names the right mode when given the other kind of ciphertext."""
    envelope = encrypted(tmp_path, config, key_id, b"abc", name="env")
    direct = encrypted(tmp_path, config, key_id, b"abc", "--direct", name="dir")
    assert "without --direct" in one_error_line(
        run("decrypt", "--direct", *CTX, str(envelope), "out", config=config))
    assert "with --direct" in one_error_line(
        run("decrypt", *CTX, str(direct), "out", config=config))
    assert not (tmp_path / "out").exists()


def test_direct_wrong_context_leaves_no_output(tmp_path: Path, config: str, key_id: str) -> None:
    """A direct blob under another context exits 1 with one line; OUT is not written."""
    sealed = encrypted(tmp_path, config, key_id, b"secret", "--direct")
    line = one_error_line(run("decrypt", "--direct", "--context", "tenant=other",
                              str(sealed), "out", config=config))
    assert "does not verify" in line
    assert "--context" in line
    assert not (tmp_path / "out").exists()


# -- failures leave nothing behind ------------------------------------------------------------


def test_wrong_context_names_the_keys_and_leaves_no_output(tmp_path: Path, config: str,
                                                           key_id: str) -> None:
    """Another --context exits 1 with one line naming the differing keys; no OUT file."""
    sealed = encrypted(tmp_path, config, key_id, os.urandom(100_000))
    before = names(tmp_path)
    line = one_error_line(run("decrypt", "--context", "tenant=other", "--context", "extra=1",
                              str(sealed), "out", config=config))
    assert "encryption context does not match" in line
    assert "'purpose'" in line  # the message also has it
    assert "'extra'" in line  # the message lacks it
    assert "'tenant'" in line  # values differ
    assert names(tmp_path) == before

    missing = one_error_line(run("decrypt", str(sealed), "out", config=config))
    assert "'tenant'" in missing
    assert names(tmp_path) == before


def _tampered(data: bytes, where: int) -> bytes:
    flipped = bytearray(data)
    flipped[where] ^= 0x01
    return bytes(flipped)


@pytest.mark.parametrize("damage", ["late_frame", "header", "truncated_mid_frame",
                                    "final_frame_dropped", "trailing_bytes"])
def test_damaged_ciphertext_leaves_no_output(tmp_path: Path, config: str, key_id: str,
                                             damage: str) -> None:
    """Tampered or truncated ciphertext exits 1 with one line; OUT is neither created nor,
    if it exists, touched, and no temporary file is left behind."""
    frame = 1024
    data = os.urandom(20 * frame + 100)  # 20 regular frames and a final one
    sealed = encrypted(tmp_path, config, key_id, data, "--frame-size", str(frame))
    raw = sealed.read_bytes()
    record = 1 + frame + 16
    final_start = len(raw) - (1 + 4 + 100 + 16)
    damaged = {
        "late_frame": _tampered(raw, final_start - record // 2),  # frames 1..18 were fine
        "header": _tampered(raw, 20),
        "truncated_mid_frame": raw[:final_start - record // 2],
        "final_frame_dropped": raw[:final_start],
        "trailing_bytes": raw + b"\x00",
    }[damage]
    bad = tmp_path / "bad.hsm"
    bad.write_bytes(damaged)
    before = names(tmp_path)

    line = one_error_line(run("decrypt", *CTX, str(bad), "out", config=config))
    assert "bad.hsm" in line
    assert names(tmp_path) == before  # no OUT, no temporary file

    out = tmp_path / "out"
    out.write_bytes(b"keep me")
    one_error_line(run("decrypt", *CTX, str(bad), str(out), config=config))
    assert out.read_bytes() == b"keep me"
    assert names(tmp_path) == before | {"out"}


def test_missing_input_is_an_error(tmp_path: Path, config: str, key_id: str) -> None:
    """An IN that does not exist exits 1 naming it; nothing is created."""
    line = one_error_line(run("encrypt", "--key", key_id, "nope", "out", config=config))
    assert "nope" in line
    assert names(tmp_path) == set()


def test_unknown_key_leaves_no_output(tmp_path: Path, config: str) -> None:
    """Encrypting under a key the HSM does not hold exits 1 and writes nothing."""
    (tmp_path / "in").write_bytes(b"x")
    line = one_error_line(run("encrypt", "--key", "00000000-0000-4000-8000-000000000000",
                              "in", "out", config=config))
    assert "no master key" in line
    assert names(tmp_path) == {"in"}


# -- usage errors (exit 2) -------------------------------------------------------------------


@pytest.mark.parametrize("args", [
    ("encrypt", "in", "out"),  # no --key
    ("encrypt", "--key", "k", "in"),  # no OUT
    ("decrypt", "in"),
    ("encrypt", "--key", "k", "--frame-size", "10", "in", "out"),
    ("encrypt", "--key", "k", "--frame-size", "lots", "in", "out"),
    ("encrypt", "--key", "k", "--direct", "--frame-size", "4096", "in", "out"),
    ("decrypt", "--context", "novalue", "in", "out"),
    ("decrypt", "--frame-size", "4096", "in", "out"),
    ("encrypt", "--key", "k", "--json", "in", "-"),
    ("decrypt", "--json", "in", "-"),
])
def test_usage_errors_exit_2(tmp_path: Path, args: tuple[str, ...]) -> None:
    """Missing or malformed arguments, and meaningless combinations, exit 2."""
    (tmp_path / "in").write_bytes(b"x")
    usage_error(run(*args))
    assert names(tmp_path) == {"in"}


@pytest.mark.parametrize("out", ["in", "./in", "link"])
def test_out_equal_to_in_is_refused(tmp_path: Path, out: str) -> None:
    """OUT naming the same file as IN (however spelled) exits 2 and leaves it untouched."""
    (tmp_path / "in").write_bytes(b"precious")
    (tmp_path / "link").symlink_to(tmp_path / "in")
    for command in (("encrypt", "--key", "k"), ("decrypt",)):
        stderr = usage_error(run(*command, "in", out))
        assert "same file" in stderr
    assert (tmp_path / "in").read_bytes() == b"precious"


def test_ciphertext_is_not_written_to_a_terminal(monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    """encrypt to '-' exits 2 when stdout is a terminal."""
    monkeypatch.setattr(envelope_cli, "stdout_is_terminal", lambda: True)
    (tmp_path / "in").write_bytes(b"x")
    assert "terminal" in usage_error(run("encrypt", "--key", "k", "in", "-"))


# -- progress --------------------------------------------------------------------------------


@pytest.mark.parametrize(("size", "terminal", "shown"), [
    (None, True, True),
    (8 * MiB, True, True),
    (8 * MiB - 1, True, False),
    (0, True, False),
    (None, False, False),
    (10**12, False, False),
])
def test_progress_only_on_a_terminal_for_large_input(size: int | None, terminal: bool,
                                                     shown: bool) -> None:
    """A bar only when stderr is a terminal and the input is >= 8 MiB or of unknown size."""
    assert envelope_cli.want_progress(size, terminal) is shown


def _stderr_on_a_terminal(args: list[str], config: str, stdin: bytes) -> bytes:
    """Run ``hsm ARGS`` with stderr on a pseudo-terminal; what it wrote there."""
    pty = pytest.importorskip("pty")
    master, slave = pty.openpty()
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO once the child has closed its end
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    try:
        reader.start()
        done = subprocess.run([sys.executable, "-m", "hsm.cli", *args], input=stdin,
                              stdout=subprocess.DEVNULL, stderr=slave, timeout=120, check=False,
                              env={**os.environ, "HSM_CONFIG": config})
    finally:
        os.close(slave)  # the reader then sees EIO and returns
        reader.join(timeout=10)
        os.close(master)
    assert done.returncode == 0
    return b"".join(chunks)


def test_progress_bar_shows_on_a_terminal(tmp_path: Path, config: str, key_id: str) -> None:
    """With stderr on a terminal, input of unknown size gets a bar; a small file none."""
    piped = _stderr_on_a_terminal(["encrypt", "--key", key_id, "-", str(tmp_path / "a")],
                                  config, os.urandom(2 * MiB))
    assert b"encrypting" in piped
    (tmp_path / "small").write_bytes(os.urandom(MiB))
    quiet = _stderr_on_a_terminal(["encrypt", "--key", key_id, str(tmp_path / "small"),
                                   str(tmp_path / "b")], config, b"")
    assert quiet == b""


# -- killed mid-way: no partial output outlives the command ----------------------------------

# `hsm` as a program, with or without O_TMPFILE (without: the named, locked temporary file).
_PROGRAM = ("import os, sys\n"
            "if sys.argv.pop(1) == 'named' and hasattr(os, 'O_TMPFILE'):\n"
            "    del os.O_TMPFILE\n"
            "sys.argv[0] = 'hsm'\n"
            "from hsm.cli import main\n"
            "main()\n")


def _has_o_tmpfile(directory: Path) -> bool:
    try:
        os.close(os.open(directory, os.O_TMPFILE | os.O_WRONLY, 0o600))
    except (AttributeError, OSError):
        return False
    return True


def _writing_into(pid: int, directory: Path) -> bool:
    """Whether process ``pid`` holds a file in ``directory`` with some output in it."""
    fds = Path(f"/proc/{pid}/fd")
    for fd in fds.iterdir():
        try:
            target = os.readlink(fd)
            size = os.stat(fd).st_size
        except OSError:
            continue
        if target.startswith(f"{directory}/") and size > 0:
            return True
    return False


def _kill_while_writing(args: list[str], stdin: bytes, *, how: str, signum: int,
                        config: str, directory: Path,
                        ) -> tuple[int, subprocess.CompletedProcess[bytes]]:
    """Run ``hsm ARGS`` fed half of ``stdin``; once its output is partly on disk, send it
    ``signum``; its pid and the finished process."""
    proc = subprocess.Popen([sys.executable, "-c", _PROGRAM, how, *args],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, "HSM_CONFIG": config})
    assert proc.stdin is not None
    try:
        proc.stdin.write(stdin[: len(stdin) // 2])
        proc.stdin.flush()
        for _ in range(3000):  # up to a minute for the first frames (no bound on speed)
            if proc.poll() is not None or _writing_into(proc.pid, directory):
                break
            threading.Event().wait(0.02)
        assert proc.poll() is None, proc.communicate(timeout=60)
        os.kill(proc.pid, signum)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=60)
    return proc.pid, subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.parametrize("how", ["o_tmpfile", "named"])
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["TERM", "KILL"])
@pytest.mark.parametrize("command", ["decrypt", "encrypt"])
def test_a_killed_command_leaves_no_partial_output(tmp_path: Path, config: str, key_id: str,
                                                   command: str, signum: int,
                                                   how: str) -> None:
    """hsm decrypt/encrypt killed mid-way with SIGTERM or SIGKILL leaves no partial output
    beside OUT: SIGTERM cleans up (exit 143, one line saying OUT was not written); after
    SIGKILL an unnamed (O_TMPFILE) file leaves nothing, and a named one is removed by the
    next run into that directory."""
    if how == "o_tmpfile" and not _has_o_tmpfile(tmp_path):
        pytest.skip("this filesystem has no O_TMPFILE")
    plaintext = os.urandom(8 * MiB)
    if command == "decrypt":
        data = encrypted(tmp_path, config, key_id, plaintext).read_bytes()
        args = ["decrypt", *CTX, "-", str(tmp_path / "out")]
    else:
        data = plaintext
        args = ["encrypt", "--key", key_id, *CTX, "-", str(tmp_path / "out")]
    before = names(tmp_path)
    pid, done = _kill_while_writing(args, data, how=how, signum=signum, config=config,
                                    directory=tmp_path)
    if signum == signal.SIGTERM:
        assert done.returncode == 128 + signal.SIGTERM, done.stderr
        assert done.stderr.decode().splitlines() == [
            f"hsm: error: SIGTERM: {tmp_path / 'out'} not written"]
        assert names(tmp_path) == before
        return
    assert done.returncode == -signal.SIGKILL
    left = names(tmp_path) - before
    if how == "o_tmpfile":
        assert left == set()
        return
    assert len(left) == 1
    assert re.fullmatch(rf"\.out\.hsm-{pid}-[0-9a-f]{{8}}\.tmp", left.pop())
    small = tmp_path / "small.in"
    small.write_bytes(b"next run")
    ok(run("encrypt", "--key", key_id, str(small), str(tmp_path / "next.hsm"), config=config))
    assert names(tmp_path) == before | {"small.in", "next.hsm"}


# -- a full disk is the output's fault -------------------------------------------------------


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("command", ["decrypt", "encrypt"])
def test_a_full_device_names_the_output_not_the_input(tmp_path: Path, config: str,
                                                      key_id: str, command: str) -> None:
    """Writing OUT fails with ENOSPC (/dev/full): the one error line names OUT, not IN."""
    data = os.urandom(100 * 1024)
    if command == "decrypt":
        src = encrypted(tmp_path, config, key_id, data)
        args = ["decrypt", *CTX, str(src), "/dev/full"]
    else:
        src = tmp_path / "five.bin"
        src.write_bytes(data)
        args = ["encrypt", "--key", key_id, str(src), "/dev/full"]
    line = one_error_line(run(*args, config=config))
    assert line == "hsm: error: cannot write /dev/full: No space left on device"
    assert str(src) not in line


# `hsm` as a program whose files may grow to 1 MiB at most (writes past it: EFBIG).
_SMALL_FILES = ("import resource, sys\n"
                "resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))\n"
                "sys.argv[0] = 'hsm'\n"
                "from hsm.cli import main\n"
                "main()\n")


@pytest.mark.parametrize("existing", [False, True], ids=["new", "existing"])
def test_a_failed_write_says_out_was_not_written_or_left_unchanged(
    tmp_path: Path, config: str, key_id: str, existing: bool
) -> None:
    """A write that fails past the file-size limit, through the temporary file: the error
    names OUT and says it was not written (new) or left unchanged (existing), which holds,
    and no temporary file is left."""
    sealed = encrypted(tmp_path, config, key_id, os.urandom(3 * MiB), name="five")
    out = tmp_path / "five.out"
    if existing:
        out.write_bytes(b"old content")
    before = names(tmp_path)
    done = subprocess.run([sys.executable, "-c", _SMALL_FILES, "decrypt", *CTX, str(sealed),
                           str(out)], capture_output=True, timeout=120, check=False,
                          env={**os.environ, "HSM_CONFIG": config})
    assert done.returncode == 1
    outcome = "left unchanged" if existing else "not written"
    assert done.stderr.decode().splitlines() == [
        f"hsm: error: cannot write {out}: File too large; {out} {outcome}"]
    assert names(tmp_path) == before
    if existing:
        assert out.read_bytes() == b"old content"


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_stdout_is_named_as_such(tmp_path: Path, config: str, key_id: str) -> None:
    """hsm decrypt IN - with stdout on a full device: 'cannot write stdout', not IN."""
    sealed = encrypted(tmp_path, config, key_id, os.urandom(100 * 1024))
    with open("/dev/full", "wb") as full:
        done = subprocess.run([sys.executable, "-m", "hsm.cli", "decrypt", *CTX, str(sealed),
                               "-"], stdout=full, stderr=subprocess.PIPE, timeout=120,
                              check=False, env={**os.environ, "HSM_CONFIG": config})
    assert done.returncode == 1
    assert done.stderr.decode().splitlines() == [
        "hsm: error: cannot write stdout: No space left on device"]
