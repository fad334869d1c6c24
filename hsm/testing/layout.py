"""What a harness directory is: its files, the :class:`Harness` and :class:`HarnessMember`
values that name them, the ``hsm.toml`` that a harness's members make, and
:class:`HarnessError`.

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
    DIR/members/<name>/count (+ .log) the shim's call counting, present while calls are
                                      counted (FaultInjector.count_calls)

Building and removing harnesses is :mod:`hsm.testing.harness`; SoftHSM itself,
:mod:`hsm.testing.softhsm`; the shim, :mod:`hsm.testing.shim`; faults,
:mod:`hsm.testing.faults`. This module imports nothing from them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from hsm.errors import HSMError, Reason

__all__ = [
    "CONFIG",
    "CONTROL_FILE",
    "COUNT_FILE",
    "MANIFEST",
    "MEMBERS_DIR",
    "PIN_FILE",
    "SO_PIN_FILE",
    "Harness",
    "HarnessError",
    "HarnessMember",
    "config_toml",
    "harness_at",
    "member_at",
]

MANIFEST = "harness.json"
CONFIG = "hsm.toml"
PIN_FILE = "pin"
SO_PIN_FILE = "so-pin"
MEMBERS_DIR = "members"
#: The fault-injection shim's control file in each member directory.
CONTROL_FILE = "fault"
#: Which calls the shim counts (present while counting); the counts go to ``count.log``.
COUNT_FILE = "count"


class HarnessError(HSMError):
    """A harness can't be built, read or removed (SoftHSM missing, not a harness, ...)."""

    default_reason = Reason.HARNESS


def _module_name(name: str) -> str:
    return f"libsofthsm2-{name}.so"


def _shim_name(name: str) -> str:
    return f"libp11shim-{name}.so"


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
    def count_control(self) -> Path:
        """Which calls the shim counts, while it exists (see :mod:`hsm.testing.faults`)."""
        return self.directory / COUNT_FILE

    @property
    def count_log(self) -> Path:
        """One line per counted call, the function's name (written by the shim)."""
        return self.directory / (COUNT_FILE + ".log")

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


def member_at(directory: Path, name: str, serial: str, faults: bool) -> HarnessMember:
    """Member ``name`` of the harness in ``directory`` (its files, whether they exist or not)."""
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


def harness_at(directory: Path, members: Iterable[HarnessMember]) -> Harness:
    """The harness in ``directory`` with these members."""
    return Harness(
        directory=directory,
        config_path=directory / CONFIG,
        members=tuple(members),
        pin_file=directory / PIN_FILE,
        so_pin_file=directory / SO_PIN_FILE,
    )


# -- hsm.toml ---------------------------------------------------------------------------------


def config_toml(harness: Harness) -> str:
    """The ``hsm.toml`` of ``harness``: every member, its module, token, PIN files and
    ``SOFTHSM2_CONF``, all as absolute paths. It holds no PIN."""
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
