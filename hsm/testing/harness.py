"""SoftHSM harnesses: stand up, read back and remove one or more independent SoftHSM
instances in a directory, with the ``hsm.toml`` that names them and the manifest that makes
the directory a harness.

What the directory holds is described in :mod:`hsm.testing.layout`. Every member uses the
same user PIN; PINs never appear in messages, reprs, logs or command lines. Tokens are
initialized through :mod:`hsm.testing.softhsm`, the fault-injection shim is built by
:mod:`hsm.testing.shim`, and faults are injected with :class:`hsm.testing.faults.FaultInjector`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import secrets
import shlex
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from hsm.testing.layout import (
    CONFIG,
    MANIFEST,
    MEMBERS_DIR,
    PIN_FILE,
    SO_PIN_FILE,
    Harness,
    HarnessError,
    HarnessMember,
    config_toml,
    harness_at,
    member_at,
)
from hsm.testing.shim import compiled_shim, install_shim, sidecar
from hsm.testing.softhsm import (
    INSTALL_HINT,
    TokenSpec,
    check_path,
    find_softhsm_module,
    init_tokens,
    write_conf,
)

__all__ = ["harness_down", "harness_up", "load_harness"]

log = logging.getLogger(__name__)

_FORMAT = "hsm.testing.harness"
_FORMAT_VERSION = 1
# Token labels are at most 32 bytes; names are also file names, so keep them plain.
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}")


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
    shim (:mod:`hsm.testing.shim`), built with the system ``cc``. ``None`` (the default):
    if the shim can't be built, log a warning and load SoftHSM directly. ``True``: raise
    :class:`HarnessError` instead. ``False``: no shim. A re-used harness must match an
    explicit ``True`` or ``False``.
    """
    member_names = _member_names(members, names)
    target = Path(directory).expanduser().resolve()
    existing = _existing(target, member_names, names is not None, faults)
    if existing is not None:
        return existing
    source = module if module is not None else find_softhsm_module()
    if not Path(source).is_file():
        raise HarnessError(f"SoftHSM module {source} is not a file; {INSTALL_HINT}")
    check_path(target)

    created_parents = _make_parents(target.parent)
    try:
        build = Path(tempfile.mkdtemp(prefix=f".{target.name}.building-", dir=target.parent))
    except BaseException:
        _remove_parents(created_parents)
        raise
    try:
        check_path(build)
        shim = _shim(faults, build)
        harness = _build(build, target, member_names, Path(source), shim)
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
            f"so remove it ({_down(target)}) and build it again"
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
        members.append(member_at(target, raw["name"], raw["serial"], faults))
    return harness_at(target, members)


def _down(target: Path) -> str:
    """The command that removes the harness in ``target`` (what messages tell people to run)."""
    return f"hsm harness down --dir {shlex.quote(str(target))}"


# -- checking the request ------------------------------------------------------------------


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
            f"remove it first: {_down(target)}"
        )
    if faults is not None and harness.faults != faults:
        have_faults = "with" if harness.faults else "without"
        raise HarnessError(
            f"{target} already holds a harness {have_faults} fault injection; "
            f"remove it first: {_down(target)}"
        )
    missing = [p for p in _expected_paths(harness) if not p.exists()]
    if missing:
        raise HarnessError(
            f"harness {target} is damaged ({missing[0]} is missing); remove it first: "
            f"{_down(target)}"
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
            yield sidecar(member.module)


# -- building --------------------------------------------------------------------------------


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
    try:
        return compiled_shim(work)
    except HarnessError as exc:
        if faults:
            raise
        log.warning("fault injection unavailable, members load SoftHSM directly: %s", exc)
        return None


def _build(build: Path, target: Path, names: list[str], source: Path,
           shim: Path | None) -> Harness:
    """Fill ``build`` with a harness whose files name their final home, ``target``."""
    os.chmod(build, 0o700)
    pin = secrets.token_hex(16)
    so_pin = secrets.token_hex(16)
    _write_private(build / PIN_FILE, pin)
    _write_private(build / SO_PIN_FILE, so_pin)
    (build / MEMBERS_DIR).mkdir(mode=0o700)
    building = [member_at(build, name, "", shim is not None) for name in names]  # as built
    for member in building:
        member.directory.mkdir(mode=0o700)
        member.token_dir.mkdir(mode=0o700)
        shutil.copyfile(source, member.softhsm_module)
        os.chmod(member.softhsm_module, 0o700)
        # Initialized through a config naming the build location, then pointed at the target.
        write_conf(member.conf, member.token_dir)
    serials = init_tokens([TokenSpec(m.softhsm_module, m.conf, m.name) for m in building],
                          pin=pin, so_pin=so_pin)
    members: list[HarnessMember] = []
    for member, serial in zip(building, serials, strict=True):
        final = member_at(target, member.name, serial, shim is not None)
        write_conf(member.conf, final.token_dir)
        if shim is not None:
            install_shim(shim, member.module, real_module=final.softhsm_module,
                         control=final.fault_control, count=final.count_control)
        members.append(final)
    harness = harness_at(target, members)
    (build / CONFIG).write_text(config_toml(harness), encoding="utf-8")
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


def _write_private(path: Path, text: str) -> None:
    """Create ``path`` with mode 0600 from the first instant; it must not exist yet."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)  # exactly 0600, whatever the umask
        os.write(fd, text.encode("ascii"))
    finally:
        os.close(fd)


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
            f"reads version {_FORMAT_VERSION}: remove it ({_down(target)}) and build it again"
        )
    return data
