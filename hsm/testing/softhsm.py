"""SoftHSM harnesses: one or more independent SoftHSM instances in a directory.

A harness directory ``DIR`` (mode 0700) holds::

    DIR/harness.json                  manifest (what makes DIR a harness)
    DIR/hsm.toml                      config for hsm.open / load_config, absolute paths
    DIR/pin, DIR/so-pin               random user and SO PINs, mode 0600
    DIR/members/<name>/softhsm2.conf  from the softhsm2.conf.in template
    DIR/members/<name>/tokens/        that member's token directory
    DIR/members/<name>/libsofthsm2-<name>.so
                                      its own copy of the module: an independent instance
    DIR/members/<name>/libp11shim-<name>.so (+ .conf)
                                      with faults (the default when ``cc`` and p11-kit's
                                      pkcs11.h exist): its own copy of the fault-injection
                                      shim, forwarding to the SoftHSM copy; hsm.toml names it
    DIR/members/<name>/fault          the shim's control file, present while a fault is set

Every member uses the same user PIN. This module never loads a PKCS#11 module in-process
(that belongs to :mod:`hsm.pkcs11`); it drives ``softhsm2-util`` in subprocesses whose
environment alone carries ``SOFTHSM2_CONF``. PINs never appear in messages, reprs or logs.
Faults are injected with :class:`hsm.testing.faults.FaultInjector`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from hsm.errors import HSMError, Reason

__all__ = [
    "Harness",
    "HarnessError",
    "HarnessMember",
    "find_softhsm_module",
    "harness_down",
    "harness_up",
    "load_harness",
]

log = logging.getLogger(__name__)

MANIFEST = "harness.json"
CONFIG = "hsm.toml"
PIN_FILE = "pin"
SO_PIN_FILE = "so-pin"
MEMBERS_DIR = "members"
#: The fault-injection shim's control file in each member directory.
CONTROL_FILE = "fault"
_FORMAT = "hsm.testing.harness"
_FORMAT_VERSION = 1

#: Where SoftHSM2's module lives when ``$HSM_SOFTHSM_MODULE`` is not set (Debian first).
MODULE_CANDIDATES: tuple[str, ...] = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib64/pkcs11/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
    "/opt/homebrew/lib/softhsm/libsofthsm2.so",
)
MODULE_ENV = "HSM_SOFTHSM_MODULE"
_INSTALL_HINT = "install it with `apt-get install softhsm2`"

# Token labels are at most 32 bytes; names are also file names, so keep them plain.
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}")
# SoftHSM's config reader cuts a value at '#' (comment) and '='; a newline ends the line.
_CONF_FORBIDDEN = frozenset("#=\n\r")
_UTIL_TIMEOUT_S = 30.0


class HarnessError(HSMError):
    """A harness can't be built, read or removed (SoftHSM missing, not a harness, ...)."""

    default_reason = Reason.HARNESS


@dataclass(frozen=True)
class HarnessMember:
    """One SoftHSM instance of a harness: its module copy, config and token."""

    name: str
    directory: Path
    module: Path
    conf: Path
    token_label: str
    serial: str
    faults: bool = False  # True: ``module`` is the fault-injection shim

    @property
    def token_dir(self) -> Path:
        return self.directory / "tokens"

    @property
    def softhsm_module(self) -> Path:
        """This member's own copy of SoftHSM (``module`` itself, or what the shim loads)."""
        return self.directory / _module_name(self.name)

    @property
    def fault_control(self) -> Path:
        """The shim's control file (see :mod:`hsm.testing.faults`)."""
        return self.directory / CONTROL_FILE

    @property
    def env(self) -> dict[str, str]:
        """The environment this member's module needs (``SOFTHSM2_CONF``)."""
        return {"SOFTHSM2_CONF": str(self.conf)}


@dataclass(frozen=True)
class Harness:
    """A harness directory: its config file, its members and where the PINs are."""

    directory: Path
    config_path: Path
    members: tuple[HarnessMember, ...]
    pin_file: Path
    so_pin_file: Path

    @property
    def faults(self) -> bool:
        """True if every member loads SoftHSM through the fault-injection shim."""
        return all(member.faults for member in self.members)

    def member(self, name: str) -> HarnessMember:
        for member in self.members:
            if member.name == name:
                return member
        names = ", ".join(m.name for m in self.members)
        raise HarnessError(f"no harness member named {name!r}; members: {names}")


# -- finding SoftHSM ----------------------------------------------------------------------


def find_softhsm_module() -> Path:
    """The SoftHSM2 PKCS#11 module: ``$HSM_SOFTHSM_MODULE``, else the usual install paths."""
    override = os.environ.get(MODULE_ENV)
    if override:
        path = Path(override).expanduser()
        if not path.is_file():
            raise HarnessError(f"{MODULE_ENV}={override} is not a file")
        return path.absolute()
    for candidate in MODULE_CANDIDATES:
        path = Path(candidate)
        if path.is_file():
            return path
    raise HarnessError(
        f"SoftHSM2 module libsofthsm2.so not found (looked in {', '.join(MODULE_CANDIDATES)}); "
        f"{_INSTALL_HINT}, or set {MODULE_ENV} to its path"
    )


def _find_util() -> str:
    util = shutil.which("softhsm2-util")
    if util is None:
        raise HarnessError(f"softhsm2-util not found on PATH; {_INSTALL_HINT}")
    return util


# -- public API -----------------------------------------------------------------------------


def harness_up(
    directory: str | os.PathLike[str],
    members: int = 1,
    *,
    module: Path | None = None,
    names: Sequence[str] | None = None,
    faults: bool | None = None,
) -> Harness:
    """Stand up ``members`` independent SoftHSM instances in ``directory``; return the harness.

    If ``directory`` already holds a harness with as many members (and the same names, when
    ``names`` is given) it is re-used as is. Any other non-empty ``directory`` is refused.
    The harness is built in a temporary directory beside ``directory`` and renamed into
    place, so a failure leaves nothing half-built behind.

    ``faults``: each member loads its SoftHSM through its own copy of the fault-injection
    shim (:mod:`hsm.testing.faults`), built with the system ``cc``. ``None`` (the default):
    if the shim can't be built, log a warning and load SoftHSM directly. ``True``: raise
    :class:`HarnessError` instead. ``False``: no shim. A re-used harness must match an
    explicit ``True`` or ``False``.
    """
    member_names = _member_names(members, names)
    target = Path(directory).expanduser().resolve()
    existing = _existing(target, member_names, names is not None, faults)
    if existing is not None:
        return existing
    util = _find_util()
    source = module if module is not None else find_softhsm_module()
    if not Path(source).is_file():
        raise HarnessError(f"SoftHSM module {source} is not a file; {_INSTALL_HINT}")
    _check_path(target)

    created_parents = _make_parents(target.parent)
    try:
        build = Path(tempfile.mkdtemp(prefix=f".{target.name}.building-", dir=target.parent))
    except BaseException:
        _remove_parents(created_parents)
        raise
    try:
        _check_path(build)
        shim = _shim(faults, build)
        harness = _build(build, target, member_names, Path(source), util, shim)
        try:
            os.rename(build, target)
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
                raise HarnessError(f"can't move the new harness into {target}: "
                                   f"{exc.strerror}") from None
            # Another process finished first: use its harness if it is what we wanted.
            shutil.rmtree(build, ignore_errors=True)
            again = _existing(target, member_names, names is not None, faults)
            if again is None:
                raise HarnessError(f"{target} appeared while the harness was being built") from None
            return again
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        _remove_parents(created_parents)
        raise
    return harness


def harness_down(directory: str | os.PathLike[str]) -> None:
    """Remove a harness directory; refuse any directory that is not a harness.

    A directory that does not exist is already down (no error).
    """
    target = Path(directory).expanduser().absolute()
    if not target.exists() and not target.is_symlink():
        return
    if target.is_symlink() or not target.is_dir():
        raise HarnessError(f"{target} is not a harness directory; not removing it")
    _read_manifest(target)  # raises HarnessError unless DIR is a harness
    shutil.rmtree(target)


def load_harness(directory: str | os.PathLike[str]) -> Harness:
    """Read back the harness in ``directory`` (from its ``harness.json`` manifest)."""
    target = Path(directory).expanduser().resolve()
    manifest = _read_manifest(target)
    recorded = manifest.get("directory")
    if recorded != str(target):
        raise HarnessError(
            f"harness {target} was built at {recorded}; its config names absolute paths, "
            f"so run harness_down and harness_up again"
        )
    raw_members = manifest.get("members")
    if not isinstance(raw_members, list) or not raw_members:
        raise HarnessError(f"harness manifest {target / MANIFEST} lists no members")
    faults = manifest.get("faults", False)
    if not isinstance(faults, bool):
        raise HarnessError(f"harness manifest {target / MANIFEST} is malformed")
    members = []
    for raw in raw_members:
        if not isinstance(raw, dict) or not all(
            isinstance(raw.get(key), str) for key in ("name", "token_label", "serial")
        ):
            raise HarnessError(f"harness manifest {target / MANIFEST} is malformed")
        if not _NAME_RE.fullmatch(raw["name"]):
            raise HarnessError(f"harness manifest {target / MANIFEST} is malformed")
        members.append(_member(target, raw["name"], raw["serial"], faults))
    return _harness(target, members)


# -- building --------------------------------------------------------------------------------


def _member_names(members: int, names: Sequence[str] | None) -> list[str]:
    if isinstance(members, bool) or not isinstance(members, int) or members < 1:
        raise HarnessError("a harness needs at least one member")
    if names is None:
        return [f"hsm-{_letters(i)}" for i in range(members)]
    if isinstance(names, str):
        raise HarnessError("names must be a sequence of member names, not one string")
    chosen = list(names)
    if len(chosen) != members:
        raise HarnessError(f"{members} member(s) but {len(chosen)} name(s) given")
    for name in chosen:
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
            raise HarnessError(
                f"member name {name!r} must be 1-32 characters of A-Z a-z 0-9 . _ - "
                f"starting with a letter or digit"
            )
    if len(set(chosen)) != len(chosen):
        raise HarnessError("member names must be unique")
    return chosen


def _letters(index: int) -> str:
    """0 -> a, 25 -> z, 26 -> aa, ... (spreadsheet columns)."""
    out = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        out = chr(ord("a") + rest) + out
    return out


def _existing(target: Path, names: list[str], names_given: bool,
              faults: bool | None) -> Harness | None:
    """The harness already in ``target`` if it matches the request; None if ``target`` is free."""
    if not target.exists():
        if target.is_symlink():
            raise HarnessError(f"{target} is a dangling symlink; not building a harness there")
        return None
    if not target.is_dir():
        raise HarnessError(f"{target} exists and is not a directory")
    if not (target / MANIFEST).exists():
        if any(target.iterdir()):
            raise HarnessError(
                f"{target} exists, is not empty and holds no harness; choose another directory"
            )
        return None  # an empty directory: the new harness is renamed over it
    harness = load_harness(target)
    have = [m.name for m in harness.members]
    if len(have) != len(names) or (names_given and have != names):
        raise HarnessError(
            f"{target} already holds a harness with {len(have)} member(s) ({', '.join(have)}); "
            f"run harness_down on it first"
        )
    if faults is not None and harness.faults != faults:
        have_faults = "with" if harness.faults else "without"
        raise HarnessError(
            f"{target} already holds a harness {have_faults} fault injection; "
            f"run harness_down on it first"
        )
    missing = [p for p in _expected_paths(harness) if not p.exists()]
    if missing:
        raise HarnessError(
            f"harness {target} is damaged ({missing[0]} is missing); run harness_down on it first"
        )
    return harness


def _expected_paths(harness: Harness) -> Iterator[Path]:
    yield harness.config_path
    yield harness.pin_file
    yield harness.so_pin_file
    for member in harness.members:
        yield member.module
        yield member.softhsm_module
        yield member.conf
        yield member.token_dir
        if member.faults:
            yield member.module.with_name(member.module.name + ".conf")


def _check_path(path: Path) -> None:
    text = str(path)
    bad = sorted(_CONF_FORBIDDEN.intersection(text))
    if bad:
        raise HarnessError(
            f"harness path {text!r} contains {' '.join(map(repr, bad))}, which SoftHSM's "
            f"config file can't hold; choose another directory"
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise HarnessError(f"harness path {text!r} is not valid UTF-8") from None


def _make_parents(parent: Path) -> list[Path]:
    """``mkdir -p parent``; return the directories it created, deepest last."""
    missing: list[Path] = []
    probe = parent
    while not probe.exists():
        missing.append(probe)
        probe = probe.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HarnessError(f"can't create {parent}: {exc.strerror}") from None
    return list(reversed(missing))


def _remove_parents(created: list[Path]) -> None:
    for path in reversed(created):
        with contextlib.suppress(OSError):
            path.rmdir()


def _shim(faults: bool | None, work: Path) -> Path | None:
    """The compiled fault-injection shim, or None when the harness goes without."""
    if faults is False:
        return None
    from hsm.testing.faults import compiled_shim  # imports this module

    try:
        return compiled_shim(work)
    except HarnessError as exc:
        if faults:
            raise
        log.warning("fault injection unavailable, members load SoftHSM directly: %s", exc)
        return None


def _build(build: Path, target: Path, names: list[str], source: Path, util: str,
           shim: Path | None) -> Harness:
    """Fill ``build`` with a harness whose files name their final home, ``target``."""
    os.chmod(build, 0o700)
    pin = secrets.token_hex(16)
    so_pin = secrets.token_hex(16)
    secrets_ = (pin, so_pin)
    _write_private(build / PIN_FILE, pin)
    _write_private(build / SO_PIN_FILE, so_pin)
    template = _template()
    (build / MEMBERS_DIR).mkdir(mode=0o700)
    members: list[HarnessMember] = []
    for name in names:
        work = build / MEMBERS_DIR / name
        work.mkdir(mode=0o700)
        (work / "tokens").mkdir(mode=0o700)
        module_copy = work / _module_name(name)
        shutil.copyfile(source, module_copy)
        os.chmod(module_copy, 0o700)
        conf = work / "softhsm2.conf"
        # Initialize through a config naming the build location, then point it at the target.
        conf.write_text(_render(template, work / "tokens"), encoding="utf-8")
        env = {**os.environ, "SOFTHSM2_CONF": str(conf)}
        _run(util, ["--module", str(module_copy), "--init-token", "--free", "--label", name,
                    "--pin", pin, "--so-pin", so_pin], env, name, secrets_)
        shown = _run(util, ["--module", str(module_copy), "--show-slots"], env, name, secrets_)
        serial = _serial_for(shown, name)
        final = _member(target, name, serial, shim is not None)
        conf.write_text(_render(template, final.token_dir), encoding="utf-8")
        if shim is not None:
            from hsm.testing.faults import install_shim  # imports this module

            install_shim(shim, work / final.module.name, real_module=final.softhsm_module,
                         control=final.fault_control)
        members.append(final)
    harness = _harness(target, members)
    (build / CONFIG).write_text(_config_toml(harness), encoding="utf-8")
    manifest = {
        "format": _FORMAT,
        "version": _FORMAT_VERSION,
        "directory": str(target),
        "source_module": str(source),
        "faults": shim is not None,
        "members": [{"name": m.name, "token_label": m.token_label, "serial": m.serial}
                    for m in members],
    }
    # Written last: a manifest means the harness is complete.
    (build / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return harness


def _module_name(name: str) -> str:
    return f"libsofthsm2-{name}.so"


def _shim_name(name: str) -> str:
    return f"libp11shim-{name}.so"


def _member(directory: Path, name: str, serial: str, faults: bool) -> HarnessMember:
    work = directory / MEMBERS_DIR / name
    return HarnessMember(
        name=name,
        directory=work,
        module=work / (_shim_name(name) if faults else _module_name(name)),
        conf=work / "softhsm2.conf",
        token_label=name,
        serial=serial,
        faults=faults,
    )


def _harness(directory: Path, members: list[HarnessMember]) -> Harness:
    return Harness(
        directory=directory,
        config_path=directory / CONFIG,
        members=tuple(members),
        pin_file=directory / PIN_FILE,
        so_pin_file=directory / SO_PIN_FILE,
    )


def _write_private(path: Path, text: str) -> None:
    """Create ``path`` with mode 0600 from the first instant; it must not exist yet."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)  # exactly 0600, whatever the umask
        os.write(fd, text.encode("ascii"))
    finally:
        os.close(fd)


def _template() -> str:
    return resources.files("hsm.testing").joinpath("softhsm2.conf.in").read_text(
        encoding="utf-8"
    )


def _render(template: str, token_dir: Path) -> str:
    _check_path(token_dir)
    return template.replace("@TOKENDIR@", str(token_dir))


def _run(util: str, args: list[str], env: dict[str, str], member: str,
         secrets_: tuple[str, ...]) -> str:
    action = args[2] if len(args) > 2 else "softhsm2-util"
    try:
        done = subprocess.run(
            [util, *args],
            env=env,
            stdin=subprocess.DEVNULL,  # never let it prompt
            capture_output=True,
            text=True,
            timeout=_UTIL_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise HarnessError(f"softhsm2-util {action} for member {member} timed out") from None
    except OSError as exc:
        raise HarnessError(f"can't run softhsm2-util: {exc.strerror}") from None
    if done.returncode != 0:
        detail = _scrub((done.stderr or done.stdout).strip(), secrets_) or "no message"
        raise HarnessError(
            f"softhsm2-util {action} for member {member} failed "
            f"(exit {done.returncode}): {detail}"
        )
    return done.stdout


def _scrub(text: str, secrets_: tuple[str, ...]) -> str:
    for value in secrets_:
        if value:
            text = text.replace(value, "***")
    return text


def _serial_for(show_slots: str, label: str) -> str:
    """The serial of the initialized token labelled ``label`` in ``--show-slots`` output."""
    found: list[str] = []
    serial = ""
    for line in show_slots.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key, value = key.strip(), value.strip()
        if key == "Serial number":
            serial = value
        elif key == "Label":
            if value == label and serial:
                found.append(serial)
            serial = ""
    if len(found) != 1:
        raise HarnessError(
            f"softhsm2-util --show-slots shows {len(found)} token(s) labelled {label!r}; "
            f"expected exactly one"
        )
    return found[0]


# -- hsm.toml ---------------------------------------------------------------------------------


def _config_toml(harness: Harness) -> str:
    count = len(harness.members)
    lines = [
        "# Written by hsm.testing for the SoftHSM harness in this directory.",
        "# No PIN is here: members read them from the pin and so-pin files.",
        "[cluster]",
        f"mode = {_toml_str('failover')}",
        f"quorum = {min(2, count)}",
        "deadline_ms = 2000",
    ]
    pin = "file:" + str(harness.pin_file)
    so_pin = "file:" + str(harness.so_pin_file)
    for member in harness.members:
        lines += [
            "",
            "[[member]]",
            f"name = {_toml_str(member.name)}",
            f"module = {_toml_str(str(member.module))}",
            f"token = {_toml_str(member.token_label)}",
            f"pin = {_toml_str(pin)}",
            f"so_pin = {_toml_str(so_pin)}",
            f"env = {{ SOFTHSM2_CONF = {_toml_str(str(member.conf))} }}",
        ]
    return "\n".join(lines) + "\n"


_TOML_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n",
                 "\f": "\\f", "\r": "\\r"}


def _toml_str(value: str) -> str:
    """``value`` as a TOML basic string."""
    out = []
    for char in value:
        if char in _TOML_ESCAPES:
            out.append(_TOML_ESCAPES[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04X}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


# -- manifest ---------------------------------------------------------------------------------


def _read_manifest(target: Path) -> dict[str, Any]:
    path = target / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise HarnessError(f"{target} is not a harness (no {MANIFEST})") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise HarnessError(f"{path} can't be read: {type(exc).__name__}") from None
    if not isinstance(data, dict) or data.get("format") != _FORMAT:
        raise HarnessError(f"{target} is not a harness ({MANIFEST} is not a harness manifest)")
    if data.get("version") != _FORMAT_VERSION:
        raise HarnessError(
            f"harness {target} has manifest version {data.get('version')!r}; this hsm "
            f"reads version {_FORMAT_VERSION}: run harness_down and harness_up again"
        )
    return data
