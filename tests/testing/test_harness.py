"""hsm.testing: SoftHSM harnesses, their config, the pytest plugin and the shell entry points."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import hsm
import hsm.testing
from hsm.config import load_config
from hsm.errors import HSMError
from hsm.testing import (
    Harness,
    HarnessError,
    find_softhsm_module,
    harness_down,
    harness_up,
    load_harness,
)
from hsm.testing import harness as harness_impl
from hsm.testing import layout as layout_impl
from hsm.testing import softhsm as softhsm_impl

pytest_plugins = ("pytester",)

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "softhsm-init"
SOFTHSM_UTIL = shutil.which("softhsm2-util")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _pins(harness: Harness) -> tuple[str, str]:
    return harness.pin_file.read_text(), harness.so_pin_file.read_text()


def _entries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


@pytest.fixture
def three(tmp_path: Path) -> Iterator[Harness]:
    harness = harness_up(tmp_path / "h3", 3)
    yield harness
    harness_down(harness.directory)


# -- independence ---------------------------------------------------------------------------


def test_members_are_independent(three: Harness) -> None:
    """Each member has its own serial, token directory, config and copy of the module."""
    members = three.members
    assert [m.name for m in members] == ["hsm-a", "hsm-b", "hsm-c"]
    assert [m.token_label for m in members] == ["hsm-a", "hsm-b", "hsm-c"]
    assert len({m.serial for m in members}) == 3
    assert all(m.serial for m in members)
    assert len({m.token_dir for m in members}) == 3
    assert len({m.conf for m in members}) == 3
    assert len({m.module for m in members}) == 3
    assert len({m.softhsm_module for m in members}) == 3
    source = find_softhsm_module().read_bytes()
    for member in members:
        assert member.directory == three.directory / "members" / member.name
        assert member.softhsm_module.name == f"libsofthsm2-{member.name}.so"
        assert not member.softhsm_module.is_symlink()
        assert member.softhsm_module.read_bytes() == source
        # hsm.toml names the member's own fault-injection shim, which loads that copy.
        assert member.faults
        assert member.module.name == f"libp11shim-{member.name}.so"
        assert not member.module.is_symlink()
        assert f"directories.tokendir = {member.token_dir}\n" in member.conf.read_text()
        assert len(list(member.token_dir.iterdir())) == 1  # exactly one token on disk


def test_each_member_sees_only_its_own_token(three: Harness) -> None:
    """softhsm2-util, run with one member's module and config, shows only that member's token."""
    assert SOFTHSM_UTIL is not None
    for member in three.members:
        shown = subprocess.run(
            [SOFTHSM_UTIL, "--module", str(member.module), "--show-slots"],
            env={**os.environ, **member.env}, capture_output=True, text=True, check=True,
        ).stdout
        labels = [line.split(":", 1)[1].strip() for line in shown.splitlines()
                  if line.strip().startswith("Label:")]
        assert [label for label in labels if label] == [member.name]
        assert f"Serial number:    {member.serial}" in shown


_LOAD_ALL = """
import json, os, sys
import pkcs11
spec = json.loads(sys.argv[1])
pin = open(spec["pin"]).read()
seen = {}
for member in spec["members"]:
    os.environ["SOFTHSM2_CONF"] = member["conf"]
    lib = pkcs11.lib(member["module"])
    tokens = [t for t in lib.get_tokens()
              if t.flags & pkcs11.TokenFlag.TOKEN_INITIALIZED]
    names = []
    for token in tokens:
        serial = token.serial
        serial = serial.decode() if isinstance(serial, bytes) else serial
        with token.open(user_pin=pin) as session:
            session.generate_random(128)
        names.append([token.label, serial.strip()])
    seen[member["name"]] = names
print(json.dumps(seen))
"""


def test_module_copies_load_side_by_side_in_one_process(three: Harness) -> None:
    """All module copies load in one process, each seeing only its own token, opened by the PIN."""
    spec = {
        "pin": str(three.pin_file),
        "members": [{"name": m.name, "module": str(m.module), "conf": str(m.conf)}
                    for m in three.members],
    }
    out = subprocess.run([sys.executable, "-c", _LOAD_ALL, json.dumps(spec)],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    seen = json.loads(out)
    assert seen == {m.name: [[m.token_label, m.serial]] for m in three.members}


# -- PINs and permissions -------------------------------------------------------------------


def test_pin_files_are_private_and_pins_stay_out_of_config(tmp_path: Path) -> None:
    """PIN files are 0600 and DIR 0700 even under umask 0; no PIN appears in any text file."""
    old = os.umask(0)
    try:
        harness = harness_up(tmp_path / "h", 2)
    finally:
        os.umask(old)
    pin, so_pin = _pins(harness)
    assert _mode(harness.pin_file) == 0o600
    assert _mode(harness.so_pin_file) == 0o600
    assert _mode(harness.directory) == 0o700
    assert len(pin) >= 32
    assert len(so_pin) >= 32
    assert pin != so_pin
    for path in (harness.config_path, harness.directory / "harness.json",
                 *(m.conf for m in harness.members)):
        text = path.read_text()
        assert pin not in text
        assert so_pin not in text
    assert pin not in repr(harness)
    assert so_pin not in repr(harness)


def test_a_failing_token_init_is_reported_without_pins_and_cleaned_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A module that can't initialize a token raises HarnessError saying why, with no PIN in
    it, and leaves nothing behind."""
    fake = tmp_path / "lib" / "not-pkcs11.so"
    fake.parent.mkdir()
    fake.write_bytes(b"not a shared object")
    pins = iter(["a" * 32, "b" * 32])
    monkeypatch.setattr("hsm.testing.harness.secrets.token_hex", lambda _n: next(pins))
    target = tmp_path / "new" / "deeper" / "h"
    with pytest.raises(HarnessError) as caught:
        harness_up(target, 2, module=fake)
    message = str(caught.value)
    assert "initializing the SoftHSM tokens failed (exit 1)" in message
    assert "not a loadable PKCS#11 module" in message
    assert "a" * 32 not in message
    assert "b" * 32 not in message
    assert not (tmp_path / "new").exists()  # no harness, no temp dir, no created parents
    assert _entries(tmp_path) == ["lib"]


def _cmdlines() -> set[str]:
    """The command line of every process that can be read now."""
    seen = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                seen.add((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(
                    "utf-8", "replace"))
            except OSError:
                continue  # gone meanwhile
    return seen


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs /proc")
def test_no_pin_is_ever_on_a_command_line(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """harness_up starts no child with a PIN among its arguments (no softhsm2-util --pin:
    tokens are initialized through PKCS#11, the PINs on a child's stdin), and no process's
    /proc/PID/cmdline shows one while it runs."""
    started: list[list[str]] = []
    real_popen = subprocess.Popen

    def recording_popen(args: Any, *rest: Any, **kwargs: Any) -> Any:
        started.append([str(arg) for arg in args])
        return real_popen(args, *rest, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", recording_popen)
    seen: set[str] = set()
    stop = threading.Event()

    def watch() -> None:
        for _ in range(10_000):  # bounded: a few seconds at most
            if stop.is_set():
                return
            seen.update(_cmdlines())

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        harness = harness_up(tmp_path / "h", 3)
    finally:
        stop.set()
        watcher.join(timeout=30)
    pin, so_pin = _pins(harness)
    assert started, "harness_up started no child process"
    for args in started:
        assert Path(args[0]).name != "softhsm2-util", args
        assert not any(pin in arg or so_pin in arg for arg in args), args[0]
    assert not any(pin in line or so_pin in line for line in seen)
    assert seen  # the watcher did read command lines


# -- hsm.toml -------------------------------------------------------------------------------


@pytest.mark.parametrize(("members", "quorum"), [(1, 1), (2, 2), (3, 2)])
def test_config_parses_with_load_config(tmp_path: Path, members: int, quorum: int) -> None:
    """hsm.toml loads with load_config and names every member, its PIN file and config."""
    harness = harness_up(tmp_path / "h", members)
    config = load_config(harness.config_path)
    assert config.cluster.mode == "failover"
    assert config.cluster.quorum == quorum
    assert config.cluster.deadline_ms == 2000
    assert [m.name for m in config.members] == [m.name for m in harness.members]
    for got, member in zip(config.members, harness.members, strict=True):
        assert got.module == str(member.module)
        assert got.token.label == member.token_label
        assert got.token.serial is None
        assert (got.pin.kind, got.pin.where) == ("file", str(harness.pin_file))
        assert dict(got.env) == {"SOFTHSM2_CONF": str(member.conf)}
        assert Path(got.module).is_absolute()


def test_toml_strings_are_escaped() -> None:
    """The TOML writer's strings read back unchanged, whatever characters they hold."""
    for value in ['plain', 'a "quoted" \\ back', "tab\tnew\nline\r", "\x00\x1f\x7f", "ünï ☃"]:
        assert tomllib.loads(f"v = {layout_impl._toml_str(value)}")["v"] == value


def test_awkward_directory_names_work(tmp_path: Path) -> None:
    """A harness directory with spaces, quotes, backslashes and non-ASCII gives a valid config."""
    harness = harness_up(tmp_path / 'my "odd" \\ dïr', 2)
    config = load_config(harness.config_path)
    assert [m.module for m in config.members] == [str(m.module) for m in harness.members]
    assert config.members[0].pin.where == str(harness.pin_file)


@pytest.mark.parametrize("bad", ["has#hash", "has=equals"])
def test_paths_softhsm_cannot_read_are_refused(tmp_path: Path, bad: str) -> None:
    """A directory whose path SoftHSM's config reader would cut short is refused up front."""
    with pytest.raises(HarnessError, match="SoftHSM"):
        harness_up(tmp_path / bad, 1)
    assert list(tmp_path.iterdir()) == []


# -- re-use, load, down ---------------------------------------------------------------------


def test_harness_up_again_reuses_the_harness(tmp_path: Path) -> None:
    """A second harness_up with the same member count returns the same harness, PINs unchanged."""
    first = harness_up(tmp_path / "h", 2)
    pins = _pins(first)
    again = harness_up(tmp_path / "h", 2)
    assert again == first
    assert _pins(again) == pins
    assert load_harness(tmp_path / "h") == first


def test_harness_up_with_other_members_is_refused(tmp_path: Path) -> None:
    """harness_up over a harness of another member count or names says which command
    removes it (hsm harness down --dir DIR, not a Python name)."""
    harness_up(tmp_path / "h", 2)
    down = f"remove it first: hsm harness down --dir {(tmp_path / 'h').resolve()}"
    with pytest.raises(HarnessError, match=down):
        harness_up(tmp_path / "h", 3)
    with pytest.raises(HarnessError, match=down):
        harness_up(tmp_path / "h", 2, names=["x", "y"])
    assert len(load_harness(tmp_path / "h").members) == 2


def test_harness_up_refuses_a_non_empty_directory_and_accepts_an_empty_one(tmp_path: Path) -> None:
    """harness_up never builds over someone's files but fills an existing empty directory."""
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(HarnessError, match="not empty"):
        harness_up(busy, 1)
    assert _entries(busy) == ["notes.txt"]
    assert _entries(tmp_path) == ["busy"]  # no temp directory left behind
    empty = tmp_path / "empty"
    empty.mkdir()
    harness = harness_up(empty, 1)
    assert harness.directory == empty.resolve()
    assert _mode(empty) == 0o700


def test_damaged_harness_is_not_reused(tmp_path: Path) -> None:
    """harness_up over a harness missing one of its files refuses rather than hand it out."""
    harness = harness_up(tmp_path / "h", 2)
    harness.members[1].module.unlink()
    with pytest.raises(HarnessError, match="damaged"):
        harness_up(tmp_path / "h", 2)


def test_custom_names_and_bad_names(tmp_path: Path) -> None:
    """Members can be named; names that can't be a token label or file name are refused."""
    harness = harness_up(tmp_path / "h", 2, names=["primary", "backup"])
    assert [m.token_label for m in harness.members] == ["primary", "backup"]
    assert harness.member("backup").softhsm_module.name == "libsofthsm2-backup.so"
    cases = [(1, ["a/b"]), (1, ["../x"]), (1, [""]), (1, ["x" * 33]), (2, ["a", "a"]),
             (2, ["a"]), (2, "ab")]
    for members, names in cases:
        with pytest.raises(HarnessError):
            harness_up(tmp_path / "n", members, names=names)
    with pytest.raises(HarnessError):
        harness_up(tmp_path / "n", 0)
    assert not (tmp_path / "n").exists()
    assert [harness_impl._letters(i) for i in (0, 25, 26, 27)] == ["a", "z", "aa", "ab"]


def test_harness_down_refuses_what_is_not_a_harness(tmp_path: Path) -> None:
    """harness_down leaves alone plain directories, look-alike manifests, files and symlinks."""
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "data").write_text("keep")
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "harness.json").write_text('{"format": "something else"}')
    afile = tmp_path / "afile"
    afile.write_text("keep")
    real = harness_up(tmp_path / "real", 1)
    link = tmp_path / "link"
    link.symlink_to(real.directory)
    for target in (plain, fake, afile, link):
        with pytest.raises(HarnessError, match="not a harness"):
            harness_down(target)
    assert (plain / "data").exists()
    assert (fake / "harness.json").exists()
    assert afile.exists()
    assert load_harness(real.directory) == real
    with pytest.raises(HarnessError, match="not a harness"):
        load_harness(plain)


def test_harness_down_removes_a_harness(tmp_path: Path) -> None:
    """harness_down deletes the whole harness directory, and a second call is a no-op."""
    harness = harness_up(tmp_path / "h", 2)
    harness_down(harness.directory)
    assert not harness.directory.exists()
    harness_down(harness.directory)
    assert list(tmp_path.iterdir()) == []


def test_moved_harness_is_refused(tmp_path: Path) -> None:
    """load_harness refuses a harness that was moved, since its config names absolute paths."""
    harness = harness_up(tmp_path / "h", 1)
    harness.directory.rename(tmp_path / "moved")
    with pytest.raises(HarnessError, match="was built at"):
        load_harness(tmp_path / "moved")
    harness_down(tmp_path / "moved")
    assert not (tmp_path / "moved").exists()


# -- SoftHSM missing ------------------------------------------------------------------------


def test_missing_softhsm_module_is_a_harness_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a SoftHSM module, find_softhsm_module and harness_up raise HarnessError."""
    monkeypatch.setenv("HSM_SOFTHSM_MODULE", str(tmp_path / "nope.so"))
    with pytest.raises(HarnessError, match="HSM_SOFTHSM_MODULE"):
        find_softhsm_module()
    with pytest.raises(HarnessError):
        harness_up(tmp_path / "h", 1)
    monkeypatch.delenv("HSM_SOFTHSM_MODULE")
    monkeypatch.setattr(softhsm_impl, "MODULE_CANDIDATES", (str(tmp_path / "nope.so"),))
    with pytest.raises(HarnessError, match="apt-get install softhsm2"):
        find_softhsm_module()
    with pytest.raises(HarnessError, match="apt-get install softhsm2"):
        harness_up(tmp_path / "h", 1)
    with pytest.raises(HarnessError, match="not a file"):
        harness_up(tmp_path / "h", 1, module=tmp_path / "nope.so")
    assert list(tmp_path.iterdir()) == []


def test_env_override_names_the_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """$HSM_SOFTHSM_MODULE, when set to a file, is the module the harness copies."""
    copy = tmp_path / "custom-softhsm.so"
    shutil.copyfile(find_softhsm_module(), copy)
    monkeypatch.setenv("HSM_SOFTHSM_MODULE", str(copy))
    assert find_softhsm_module() == copy
    harness = harness_up(tmp_path / "h", 1)
    assert harness.members[0].softhsm_module.read_bytes() == copy.read_bytes()


def test_no_softhsm_util_is_needed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With nothing on PATH (no softhsm2-util), a harness still comes up and its token
    opens with the PIN from its PIN file."""
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    harness = harness_up(tmp_path / "h", 1, faults=False)
    with hsm.open(harness.config_path) as client:
        assert len(client.generate_random(8)) == 8


# -- package, plugin, shell -----------------------------------------------------------------


def test_public_api_is_curated() -> None:
    """hsm.testing exports exactly the harness API."""
    assert sorted(hsm.testing.__all__) == sorted([
        "Harness", "HarnessMember", "HarnessError", "harness_up", "harness_down",
        "load_harness", "find_softhsm_module", "FaultInjector", "Fault",
    ])
    assert issubclass(HarnessError, HSMError)


def test_plugin_import_adds_no_pkcs11() -> None:
    """Importing the plugin loads neither pkcs11 nor the client beyond what `import hsm` does."""
    code = (
        "import sys, hsm\n"
        "before = set(sys.modules)\n"
        "import hsm.testing.plugin\n"
        "new = sorted(set(sys.modules) - before)\n"
        "print([m for m in new if 'pkcs11' in m or m.startswith(('hsm.client', 'hsm.keys'))])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_plugin_fixtures_build_and_tear_down(pytester: pytest.Pytester) -> None:
    """The plugin's fixtures give harnesses and config paths and remove them after each test."""
    pytester.makepyfile(textwrap.dedent(
        """\
        from hsm.config import load_config

        made = []

        def test_factory(hsm_harness_factory):
            one = hsm_harness_factory()
            three = hsm_harness_factory(3)
            assert len(one.members) == 1 and len(three.members) == 3
            assert one.directory != three.directory
            made.extend([one.directory, three.directory])

        def test_config(hsm_config, hsm_harness):
            assert hsm_config == hsm_harness.config_path
            assert [m.name for m in load_config(hsm_config).members] == ["hsm-a"]
            made.append(hsm_harness.directory)

        def test_torn_down():
            assert len(made) == 3
            assert not any(d.exists() for d in made)
        """
    ))
    result = pytester.runpytest("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=3)


def test_python_m_up_and_down(tmp_path: Path) -> None:
    """`python -m hsm.testing up` prints the config path, `down` removes it, errors exit 1 or 2."""
    target = tmp_path / "h"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "hsm.testing", *args],
                              capture_output=True, text=True, check=False)

    up = run("up", str(target), "--members", "2")
    assert up.returncode == 0, up.stderr
    assert up.stdout == f"{target.resolve() / 'hsm.toml'}\n"
    assert len(load_harness(target).members) == 2
    clash = run("up", str(target), "--members", "3")
    assert clash.returncode == 1
    assert f"hsm harness down --dir {target.resolve()}" in clash.stderr
    assert clash.stdout == ""
    assert run("up", str(target), "--members", "0").returncode == 2
    assert run("down", str(tmp_path)).returncode == 1
    down = run("down", str(target))
    assert down.returncode == 0
    assert not target.exists()
    named = run("up", str(target), "--name", "left", "--name", "right")
    assert named.returncode == 0, named.stderr
    assert [m.name for m in load_harness(target).members] == ["left", "right"]


def _script_copy(tmp_path: Path) -> Path:
    """A copy of scripts/softhsm-init in a fake checkout whose .venv is the real one."""
    root = tmp_path / "checkout"
    (root / "scripts").mkdir(parents=True)
    (root / ".venv").symlink_to(ROOT / ".venv")
    script = root / "scripts" / "softhsm-init"
    shutil.copy2(SCRIPT, script)
    return script


def test_softhsm_init_script(tmp_path: Path) -> None:
    """scripts/softhsm-init [DIR] [MEMBERS] builds a harness (default ./.hsm), prints its config."""
    assert os.access(SCRIPT, os.X_OK)
    script = _script_copy(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    default = subprocess.run([str(script)], cwd=work, capture_output=True, text=True, check=False)
    assert default.returncode == 0, default.stderr
    assert default.stdout == f"{work.resolve() / '.hsm' / 'hsm.toml'}\n"
    assert len(load_harness(work / ".hsm").members) == 1
    two = subprocess.run([str(script), str(tmp_path / "two"), "2"], capture_output=True,
                         text=True, check=False)
    assert two.returncode == 0, two.stderr
    assert two.stdout == f"{tmp_path.resolve() / 'two' / 'hsm.toml'}\n"
    bad = subprocess.run([str(script), str(tmp_path / "x"), "many"], capture_output=True,
                         text=True, check=False)
    assert bad.returncode == 2
    assert not (tmp_path / "x").exists()


def test_softhsm_init_runs_bootstrap_first(tmp_path: Path) -> None:
    """scripts/softhsm-init runs scripts/_bootstrap when present, keeping its output off stdout."""
    script = _script_copy(tmp_path)
    marker = tmp_path / "bootstrapped"
    (script.parent / "_bootstrap").write_text(f'echo bootstrapping\ntouch "{marker}"\n')
    done = subprocess.run([str(script), str(tmp_path / "h")], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert marker.exists()
    assert done.stdout == f"{tmp_path.resolve() / 'h' / 'hsm.toml'}\n"
    assert "bootstrapping" in done.stderr


def test_faults_asked_for_and_no_compiler_is_refused(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A harness asked for with fault injection does not come up without it (no C compiler
    here): it says what to install and leaves nothing behind; left to choose, it comes up
    without, and a later explicit ask for faults refuses to re-use it."""
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv("HSM_SHIM_CACHE", str(tmp_path / "cache"))
    target = tmp_path / "h"
    with pytest.raises(HarnessError, match=r"apt-get install .*gcc libc6-dev"):
        harness_up(target, 1, faults=True)
    assert not target.exists()
    plain = harness_up(target, 1)
    assert not plain.faults
    with pytest.raises(HarnessError, match="without fault injection"):
        harness_up(target, 1, faults=True)


def test_harness_up_cli_takes_faults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``hsm harness up --faults`` exits 1 with one line naming the missing compiler."""
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv("HSM_SHIM_CACHE", str(tmp_path / "cache"))
    done = subprocess.run(
        [sys.executable, "-m", "hsm.cli", "harness", "up", "--dir", str(tmp_path / "h"),
         "--faults"], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert "no C compiler" in done.stderr
