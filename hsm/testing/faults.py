"""Fault injection for harness members: the control file each member's shim reads, the
:class:`FaultInjector` that writes it, lost tokens, and modules finalized under their client.

Each member of a harness built with faults (the default when a C compiler and the PKCS#11
header are installed) loads its SoftHSM copy through its own copy of a pass-through PKCS#11
module, the *shim* (built by :mod:`hsm.testing.shim`). Before each call the shim reads the
member's control file ``DIR/members/<name>/fault``: while it exists, calls can be delayed,
blocked or answered with any ``CKR_*`` code. Deleting the file heals at once, with no
re-initialize. See ``docs/FAULTS.md``.

Faults at the level users meet them need no shim: :meth:`FaultInjector.lose_token` renames
the member's token directory away, :meth:`FaultInjector.heal` puts it back, and
:func:`finalize_under` finalizes a loaded module under its client.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hsm.pkcs11.oslocking import finalize_module
from hsm.testing.control import (
    CKR_CODES,
    LIBRARY_CALLS,
    PKCS11_FUNCTIONS,
    Fault,
    ckr_code,
    ckr_name,
    non_negative_ms,
    parse_calls,
    write_atomic,
)
from hsm.testing.harness import load_harness
from hsm.testing.layout import CONTROL_FILE, MANIFEST, Harness, HarnessError, HarnessMember
from hsm.testing.shim import sidecar

if TYPE_CHECKING:
    from hsm.pkcs11 import Module

__all__ = [
    "CKR_CODES",
    "CONTROL_FILE",
    "LIBRARY_CALLS",
    "PKCS11_FUNCTIONS",
    "Fault",
    "FaultInjector",
    "HealReport",
    "ckr_code",
    "ckr_name",
    "finalize_under",
    "parse_calls",
]

log = logging.getLogger(__name__)

#: Where a member's token directory goes while its token is "lost".
LOST_SUFFIX = ".lost"
#: The shim looks for an absent control file again within 1 ms; writers wait a little longer
#: so that every call that starts after inject()/heal() returns obeys the change.
SETTLE_S = 0.002


# -- the injector ------------------------------------------------------------------------------


@dataclass(frozen=True)
class HealReport:
    """What :meth:`FaultInjector.heal` undid."""

    member: str
    fault_cleared: bool
    token_restored: bool

    def as_dict(self) -> dict[str, Any]:
        return {"member": self.member, "fault_cleared": self.fault_cleared,
                "token_restored": self.token_restored}


class FaultInjector:
    """Inject and heal faults on the members of one harness (any process may do it).

    ``inject``/``hang`` need a harness built with faults (the default); ``lose_token`` and
    ``heal`` work on every harness.
    """

    def __init__(self, harness: Harness) -> None:
        self.harness = harness

    @classmethod
    def for_config(cls, config: str | os.PathLike[str]) -> FaultInjector:
        """The injector for the harness whose ``hsm.toml`` is ``config``."""
        path = Path(config).expanduser()
        if not path.is_file():
            raise HarnessError(f"config {path} does not exist")
        directory = path.resolve().parent
        if not (directory / MANIFEST).is_file():
            raise HarnessError(
                f"config {path} is not a harness's hsm.toml ({directory} holds no "
                f"{MANIFEST}); faults work on harnesses made by `hsm harness up`"
            )
        return cls(load_harness(directory))

    def _member(self, member: str | HarnessMember) -> HarnessMember:
        return self.harness.member(member if isinstance(member, str) else member.name)

    def _shimmed(self, member: str | HarnessMember) -> HarnessMember:
        found = self._member(member)
        if not found.faults:
            raise HarnessError(
                f"member {found.name} loads SoftHSM directly (harness built without fault "
                f"injection: --no-faults, or no C compiler or pkcs11.h then); only "
                f"lose-token and heal work on it"
            )
        return found

    # -- shim faults --------------------------------------------------------------------

    def inject(self, member: str | HarnessMember, error: str | int | None = None, *,
               delay_ms: int = 0, calls: str | Iterable[str] | None = None,
               duration_ms: int | None = None) -> Fault:
        """From now on, ``member``'s calls wait ``delay_ms`` and/or return ``error``.

        ``calls`` limits the fault to some PKCS#11 functions (``"C_Encrypt,C_Decrypt"``,
        ``["C_WrapKey"]``, ``"*"`` for all); by default every call but C_Initialize,
        C_Finalize and C_GetInfo. ``duration_ms`` ends the fault by itself.
        Replaces any fault already set on the member.
        """
        code = 0 if error is None else ckr_code(error)
        delay = non_negative_ms(delay_ms, "delay_ms")
        if not code and not delay:
            raise HarnessError("a fault needs an error code, a delay, or both")
        return self._set(member, Fault(error=code, delay_ms=delay, calls=parse_calls(calls),
                                       until_ms=self._until(duration_ms)))

    def hang(self, member: str | HarnessMember, ms: int | None = None, *,
             calls: str | Iterable[str] | None = None) -> Fault:
        """``member``'s calls block until :meth:`heal` (or, with ``ms``, for the next ``ms``
        milliseconds at most: then the member answers again by itself)."""
        if ms is not None and (non_negative_ms(ms, "ms") == 0):
            raise HarnessError("a hang of 0 ms is no hang")
        return self._set(member, Fault(hang=True, calls=parse_calls(calls),
                                       until_ms=self._until(ms)))

    @staticmethod
    def _until(duration_ms: int | None) -> int | None:
        if duration_ms is None:
            return None
        return int(time.time() * 1000) + non_negative_ms(duration_ms, "duration_ms")

    def _set(self, member: str | HarnessMember, fault: Fault) -> Fault:
        target = self._shimmed(member)
        write_atomic(target.fault_control, fault.to_text())
        time.sleep(SETTLE_S)
        log.info("fault on %s: %s", target.name, fault.describe())
        return fault

    def fault(self, member: str | HarnessMember) -> Fault | None:
        """The fault set on ``member`` now (None if healthy; an expired one is returned)."""
        target = self._member(member)
        try:
            return Fault.parse(target.fault_control.read_text(encoding="ascii",
                                                              errors="replace"))
        except FileNotFoundError:
            return None

    def clear(self, member: str | HarnessMember) -> bool:
        """Delete ``member``'s control file; True if there was one."""
        try:
            self._member(member).fault_control.unlink()
        except FileNotFoundError:
            return False
        return True  # seen at once: the shim reads a control file it found on every call

    # -- counting calls -----------------------------------------------------------------

    def count_calls(self, member: str | HarnessMember,
                    calls: str | Iterable[str] = "*") -> None:
        """From now on, count ``member``'s calls of these PKCS#11 functions (``"C_Login"``,
        ``["C_Login", "C_Logout"]``, ``"*"`` for every one), in every process using the
        harness, until :meth:`stop_counting`. Starts from zero, also when already counting.

        Calls are counted as they reach the shim, before any fault applies to them.
        """
        names = parse_calls(calls)
        assert names is not None  # parse_calls gives None only for None
        target = self._counting(member)
        target.count_control.unlink(missing_ok=True)
        time.sleep(SETTLE_S)  # calls that were appending have done so
        target.count_log.unlink(missing_ok=True)
        write_atomic(target.count_control, "# hsm.testing call counting: delete it to stop\n"
                     f"calls={','.join(names)}\n")
        time.sleep(SETTLE_S)  # the shim looks for an absent count file again within 1 ms
        log.info("counting calls of %s on %s", ",".join(names), target.name)

    def calls(self, member: str | HarnessMember) -> Counter[str]:
        """How many times each counted function of ``member`` was called since
        :meth:`count_calls` (a ``Counter``: functions never called are 0)."""
        target = self._member(member)
        try:
            text = target.count_log.read_text(encoding="ascii", errors="replace")
        except FileNotFoundError:
            return Counter()
        return Counter(line for line in text.splitlines() if line)

    def stop_counting(self, member: str | HarnessMember) -> Counter[str]:
        """Stop counting ``member``'s calls; the counts up to now (then forgotten)."""
        target = self._member(member)
        target.count_control.unlink(missing_ok=True)
        time.sleep(SETTLE_S)
        counts = self.calls(target)
        with contextlib.suppress(FileNotFoundError):
            target.count_log.unlink()
        return counts

    def _counting(self, member: str | HarnessMember) -> HarnessMember:
        target = self._shimmed(member)
        try:
            conf = sidecar(target.module).read_text(encoding="utf-8")
        except OSError:
            conf = ""
        if not any(line.startswith("count=") for line in conf.splitlines()):
            raise HarnessError(
                f"member {target.name}'s shim counts no calls (the harness was built by an "
                f"older hsm); rebuild it: hsm harness down --dir {self.harness.directory}, "
                f"then hsm harness up"
            )
        return target

    # -- token faults -------------------------------------------------------------------

    @staticmethod
    def _lost_dir(member: HarnessMember) -> Path:
        return member.token_dir.with_name(member.token_dir.name + LOST_SUFFIX)

    def token_lost(self, member: str | HarnessMember) -> bool:
        target = self._member(member)
        return self._lost_dir(target).exists() and not target.token_dir.exists()

    def lose_token(self, member: str | HarnessMember) -> Path:
        """Rename ``member``'s token directory away (as if the token were pulled); returns
        where it went. Its module fails until :meth:`restore_token` or :meth:`heal` and a
        re-initialize (SoftHSM does not notice the directory coming back by itself)."""
        target = self._member(member)
        lost = self._lost_dir(target)
        if self.token_lost(target):
            return lost
        if lost.exists():
            raise HarnessError(f"{lost} exists beside {target.token_dir}; remove one of them")
        try:
            os.rename(target.token_dir, lost)
        except OSError as exc:
            raise HarnessError(f"can't move {target.token_dir} away: {exc.strerror}") from None
        log.info("token of %s lost (%s)", target.name, lost)
        return lost

    def restore_token(self, member: str | HarnessMember) -> bool:
        """Put back a token directory taken by :meth:`lose_token`; True if it was lost."""
        target = self._member(member)
        lost = self._lost_dir(target)
        if not lost.exists():
            return False
        if target.token_dir.exists():
            raise HarnessError(f"both {target.token_dir} and {lost} exist; remove one of them")
        try:
            os.rename(lost, target.token_dir)
        except OSError as exc:
            raise HarnessError(f"can't restore {target.token_dir}: {exc.strerror}") from None
        log.info("token of %s restored", target.name)
        return True

    def heal(self, member: str | HarnessMember) -> HealReport:
        """Undo every fault on ``member``: delete its control file, restore its token."""
        target = self._member(member)
        cleared = self.clear(target)
        restored = self.restore_token(target)
        return HealReport(target.name, cleared, restored)

    def heal_all(self) -> list[HealReport]:
        """:meth:`heal` every member of the harness (``hsm fault heal --all``), in order."""
        return [self.heal(member) for member in self.harness.members]

    def __repr__(self) -> str:
        return f"FaultInjector({str(self.harness.directory)!r})"


def finalize_under(module: Module, *, drain_timeout: float = 30.0) -> None:
    """Finalize a loaded module behind its users' backs, as foreign code in the process would.

    ``module`` is an :class:`hsm.pkcs11.Module`, e.g. the one a client's member runs on.
    python-pkcs11 and ``module`` are not told: its next call fails (not initialized) and the
    one after recovers by re-initializing. ``C_Finalize`` runs only while the module is
    quiesced (no call of ours in flight: SoftHSM crashes when it is finalized under a
    running call, as real modules may); :class:`~hsm.HSMUnavailable` if calls are still in
    flight after ``drain_timeout`` seconds.
    """
    with module.quiesced(drain_timeout=drain_timeout):
        finalize_module(module.path)
