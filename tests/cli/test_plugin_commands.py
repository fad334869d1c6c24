"""Commands that come through the ``hsm.commands`` entry points: ``hsm harness``, ``hsm fault``
and ``hsm drill`` from hsm.testing, found without hsm.cli importing it, loaded only when
needed; a broken plugin; ``python -m hsm.testing`` as the same command line."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from hsm.cli import ENTRY_POINT_GROUP, cli
from hsm.testing import FaultInjector, Harness, load_harness
from hsm.testing.plugin import HarnessFactory

TESTING_COMMANDS = {"harness": "hsm.testing.commands.harness:harness",
                    "fault": "hsm.testing.commands.fault:fault",
                    "drill": "hsm.testing.commands.drill:drill"}


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def ok_json(result: Result) -> dict[str, Any]:
    assert result.exit_code == 0, (result.stdout, result.stderr)
    data = json.loads(result.stdout)
    assert isinstance(data, dict)
    return data


def _modules_after(code: str) -> list[str]:
    """The hsm.testing / hsm.cluster modules loaded by ``code`` in a fresh interpreter."""
    probe = (f"{code}\nimport json, sys\n"
             "print(json.dumps(sorted(m for m in sys.modules "
             "if m.startswith(('hsm.testing', 'hsm.cluster')))))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=60, check=True)
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert isinstance(found, list)
    return found


def test_the_testing_commands_are_registered_entry_points() -> None:
    """pyproject.toml registers harness, fault and drill in the hsm.commands group."""
    registered = {point.name: point.value for point in entry_points(group=ENTRY_POINT_GROUP)}
    assert {name: registered.get(name) for name in TESTING_COMMANDS} == TESTING_COMMANDS


def test_help_lists_builtin_and_plugin_commands_in_order() -> None:
    """hsm --help lists built-in and plugin commands together, in name order."""
    result = run("--help")
    assert result.exit_code == 0
    listed = [line.split()[0] for line in result.stdout.split("Commands:")[1].splitlines()
              if line.startswith("  ")]
    assert listed == sorted(listed)
    assert {"harness", "fault", "drill", "key", "status"} <= set(listed)


def test_a_builtin_command_loads_nothing_of_hsm_testing() -> None:
    """`hsm key --help` (like any built-in command) imports no hsm.testing module."""
    code = ("from hsm.cli import cli\n"
            "try:\n    cli.main(['key', '--help'], prog_name='hsm')\n"
            "except SystemExit:\n    pass")
    assert [m for m in _modules_after(code) if m.startswith("hsm.testing")] == []


def test_help_loads_the_plugin_commands_but_not_what_they_run() -> None:
    """`hsm --help` imports the commands' modules for their one-line help, not what they run
    (harnesses, faults, the drill, the cluster)."""
    code = ("from hsm.cli import cli\n"
            "try:\n    cli.main(['--help'], prog_name='hsm')\n"
            "except SystemExit:\n    pass")
    loaded = _modules_after(code)
    assert {f"hsm.testing.commands.{name}" for name in TESTING_COMMANDS} <= set(loaded)
    for running in ("hsm.testing.harness", "hsm.testing.faults", "hsm.testing.drill",
                    "hsm.cluster.ceremony"):
        assert running not in loaded


@pytest.fixture
def plugins(monkeypatch: pytest.MonkeyPatch) -> dict[str, EntryPoint]:
    """The top group's entry points, to add fakes to; restored (with its commands) after."""
    found = dict(cli.entry_points())
    monkeypatch.setattr(cli, "_entry_points", found)
    monkeypatch.setattr(cli, "commands", dict(cli.commands))  # commands loaded here go too
    return found


def test_a_broken_plugin_is_listed_and_fails_in_one_line(plugins: dict[str, EntryPoint]) -> None:
    """A plugin whose module is missing, or that is no click command: `hsm --help` still
    works and lists it; running it is one error line, exit 1, whatever the arguments."""
    plugins["gone"] = EntryPoint("gone", "no_such_module_here:command", ENTRY_POINT_GROUP)
    plugins["odd"] = EntryPoint("odd", "os.path:join", ENTRY_POINT_GROUP)
    result = run("--help")
    assert result.exit_code == 0, result.output
    assert "gone" in result.stdout
    assert "can't be loaded" in result.stdout
    for name, why in (("gone", "ModuleNotFoundError"), ("odd", "is not a click command")):
        failed = run(name, "up", "--dir", "x", "--help")
        assert failed.exit_code == 1, failed.output
        assert failed.stdout == ""
        lines = failed.stderr.splitlines()
        assert len(lines) == 1
        assert lines[0].startswith(f"hsm: error: command '{name}' (")
        assert why in lines[0]


def test_a_builtin_command_wins_over_a_plugin_of_the_same_name(
    plugins: dict[str, EntryPoint],
) -> None:
    """A plugin registering a built-in command's name is ignored: the built-in runs."""
    plugins["key"] = EntryPoint("key", "no_such_module_here:command", ENTRY_POINT_GROUP)
    result = run("key", "--help")
    assert result.exit_code == 0
    assert "Master keys" in result.stdout


# -- hsm harness and python -m hsm.testing: one command line -------------------------------------


def _python_m(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hsm.testing", *args], capture_output=True,
                          text=True, timeout=120, check=False)


def test_python_m_hsm_testing_is_hsm_harness(tmp_path: Path) -> None:
    """The same options and output both ways: DIR or --dir, --json, --name, --members."""
    made = _python_m("up", "--dir", str(tmp_path / "a"), "--name", "x", "--name", "y",
                     "--no-cluster-init", "--json")
    assert made.returncode == 0, made.stderr
    data = json.loads(made.stdout)
    assert data["members"] == ["x", "y"]
    assert sorted(data) == ["config", "directory", "members"]  # no ceremony asked for
    again = ok_json(run("harness", "up", str(tmp_path / "a"), "--members", "2", "--name", "x",
                        "--name", "y", "--json"))
    assert again["config"] == data["config"]
    assert "cluster_wrapping_kcv" in again  # re-used harness, ceremony run by default
    assert _python_m("-h").returncode == 0
    assert "Usage: python -m hsm.testing up" in _python_m("up", "--help").stdout
    both = _python_m("up", str(tmp_path / "b"), "--dir", str(tmp_path / "c"))
    assert both.returncode == 2
    assert "two directories" in both.stderr
    removed = _python_m("down", str(tmp_path / "a"), "--json")
    assert removed.returncode == 0, removed.stderr
    assert json.loads(removed.stdout) == {"removed": str(tmp_path / "a")}
    nothing = run("harness", "down")
    assert nothing.exit_code == 2
    assert "Missing option '--dir'" in nothing.stderr


def test_python_m_hsm_testing_errors_are_one_line(tmp_path: Path) -> None:
    """python -m hsm.testing reports a refused harness as one error line, exit 1."""
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "file").write_text("x", encoding="utf-8")
    refused = _python_m("up", str(tmp_path / "keep"))
    assert refused.returncode == 1
    assert refused.stdout == ""
    assert refused.stderr.splitlines() == [
        f"hsm: error: {tmp_path / 'keep'} exists, is not empty and holds no harness; "
        "choose another directory"]


# -- hsm fault heal --all --------------------------------------------------------------------------


@pytest.fixture
def two(hsm_harness_factory: HarnessFactory) -> Harness:
    return hsm_harness_factory(2, faults=True, cluster_init=False)


def test_fault_heal_all(two: Harness) -> None:
    """--all heals every member, in order; MEMBER and --all together, or neither, is a usage
    error."""
    cfg = str(two.config_path)
    injector = FaultInjector(two)
    injector.inject("hsm-a", "DEVICE_ERROR")
    injector.lose_token("hsm-b")
    healed = ok_json(run("fault", "heal", "--all", "--config", cfg, "--json"))
    assert healed == {"members": [
        {"member": "hsm-a", "fault_cleared": True, "token_restored": False},
        {"member": "hsm-b", "fault_cleared": False, "token_restored": True}]}
    assert injector.fault("hsm-a") is None
    assert not injector.token_lost("hsm-b")
    injector.hang("hsm-b")
    human = run("fault", "heal", "--all", "--config", cfg)
    assert human.exit_code == 0
    assert human.stdout == "hsm-a: nothing to heal\nhsm-b: fault cleared\n"
    for args in (["fault", "heal"], ["fault", "heal", "hsm-a", "--all"]):
        refused = run(*args, "--config", cfg)
        assert refused.exit_code == 2
        assert "give MEMBER or --all" in refused.stderr
    assert load_harness(two.directory) == two


def _every_command(group: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command path under ``group`` (``("fault", "inject")``...), groups included."""
    import click

    ctx = click.Context(group)
    found = [path]
    if isinstance(group, click.Group):
        for name in group.list_commands(ctx):
            command = group.get_command(ctx, name)
            if command is not None:
                found += _every_command(command, (*path, name))
    return found


@pytest.mark.parametrize("path", _every_command(cli), ids=lambda p: " ".join(p) or "hsm")
def test_help_texts_show_no_docstring_markup(path: tuple[str, ...]) -> None:
    """No command's --help shows reStructuredText or Markdown markup from its docstring
    (``code``, :mod:, backquotes): click prints docstrings as they are."""
    result = run(*path, "--help")
    assert result.exit_code == 0, result.output
    for markup in ("``", ":mod:", ":class:", ":func:", ":meth:", "`"):
        assert markup not in result.stdout, f"hsm {' '.join(path)} --help shows {markup!r}"
