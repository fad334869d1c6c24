"""``hsm fault ...``: inject and heal faults on the members of a SoftHSM harness.

``--config`` names the harness's ``hsm.toml`` (the harness directory is the one holding
it). Faults are files, so a fault set here reaches every process using the harness, at its
next PKCS#11 call. :mod:`hsm.testing.faults` is imported when a command runs or parses its
options: ``hsm --help`` imports this module for its one-line help, and stays faster
without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from hsm.cli import HSMGroup
from hsm.cli._common import common_options, emit, settings
from hsm.config import find_config_path

if TYPE_CHECKING:
    from hsm.testing.faults import FaultInjector, HealReport

__all__ = ["fault"]

_ERROR_NAMES = ("DEVICE_ERROR", "DEVICE_REMOVED", "TOKEN_NOT_PRESENT", "SESSION_HANDLE_INVALID",
                "FUNCTION_FAILED", "SESSION_CLOSED", "GENERAL_ERROR")


def _injector() -> FaultInjector:
    from hsm.testing.faults import FaultInjector  # here: see the module docstring

    return FaultInjector.for_config(find_config_path(settings().config))


def _error_code(_ctx: click.Context, _param: click.Parameter, value: str | None) -> int | None:
    if value is None:
        return None
    from hsm.testing.faults import ckr_code  # here: see the module docstring
    from hsm.testing.layout import HarnessError

    try:
        return ckr_code(value)
    except HarnessError as exc:
        raise click.BadParameter(exc.message) from None


def _calls(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    from hsm.testing.faults import parse_calls  # here: see the module docstring
    from hsm.testing.layout import HarnessError

    try:
        parse_calls(value)
    except HarnessError as exc:
        raise click.BadParameter(exc.message) from None
    return value


_member_argument = click.argument("member")
_calls_option = click.option(
    "--calls", metavar="C_X,C_Y", callback=_calls,
    help="Only these PKCS#11 functions, e.g. C_Encrypt,C_Decrypt ('*': every call). "
         "Default: every call but C_Initialize, C_Finalize, C_GetInfo.",
)


@click.group(cls=HSMGroup)
@common_options
def fault() -> None:
    """Inject faults into the members of a SoftHSM harness (hsm harness up).

    Each member loads SoftHSM through its own pass-through PKCS#11 module, which reads the
    member's control file before every call: a fault takes effect at the next call of every
    process using the harness, and 'hsm fault heal' ends it with no re-initialize.
    --config names the harness's hsm.toml.
    """


@fault.command("inject")
@_member_argument
@click.option("--error", "error", metavar="NAME|0xNN", callback=_error_code,
              help=f"CKR code to return: {'|'.join(_ERROR_NAMES)} or any 0xNN.")
@click.option("--delay-ms", type=click.IntRange(min=0), default=0, metavar="N",
              help="Add N ms of latency to each call (before the error, if any).")
@_calls_option
@click.option("--for-ms", "duration_ms", type=click.IntRange(min=1), metavar="N",
              help="End the fault by itself after N ms (default: until healed).")
@common_options
def inject(member: str, error: int | None, delay_ms: int, calls: str | None,
           duration_ms: int | None) -> None:
    """Make MEMBER's calls return a CKR code and/or run slower."""
    if error is None and delay_ms == 0:
        raise click.UsageError("give --error, --delay-ms or both")
    injected = _injector().inject(member, error, delay_ms=delay_ms, calls=calls,
                                  duration_ms=duration_ms)
    emit({"member": member, "fault": injected.as_dict()},
         f"{member}: {injected.describe()}; undo with: hsm fault heal {member}")


@fault.command("hang")
@_member_argument
@click.option("--ms", type=click.IntRange(min=1), metavar="N",
              help="Hang for the next N ms only (default: until healed).")
@_calls_option
@common_options
def hang(member: str, ms: int | None, calls: str | None) -> None:
    """Make MEMBER's calls block until healed (or for N ms)."""
    injected = _injector().hang(member, ms, calls=calls)
    emit({"member": member, "fault": injected.as_dict()},
         f"{member}: {injected.describe()}; undo with: hsm fault heal {member}")


@fault.command("lose-token")
@_member_argument
@common_options
def lose_token(member: str) -> None:
    """Take MEMBER's token directory away, as if the token were pulled."""
    injector = _injector()
    lost = injector.lose_token(member)
    emit({"member": member, "token_lost": True, "moved_to": str(lost)},
         f"{member}: token lost (moved to {lost}); undo with: hsm fault heal {member}")


@fault.command("heal")
@click.argument("member", required=False)
@click.option("--all", "every", is_flag=True, help="Heal every member of the harness.")
@common_options
def heal(member: str | None, every: bool) -> None:
    """End every fault on MEMBER: clear its control file, restore its token.

    With --all instead of MEMBER: on every member of the harness.
    """
    if (member is None) == (not every):
        raise click.UsageError("give MEMBER or --all" if member is None
                               else "give MEMBER or --all, not both")
    injector = _injector()
    if member is not None:
        report = injector.heal(member)
        emit(report.as_dict(), _healed(report))
        return
    reports = injector.heal_all()
    emit({"members": [report.as_dict() for report in reports]},
         "\n".join(_healed(report) for report in reports))


def _healed(report: HealReport) -> str:
    undone = [what for what, done in (("fault cleared", report.fault_cleared),
                                      ("token restored", report.token_restored)) if done]
    return f"{report.member}: {', '.join(undone) or 'nothing to heal'}"


@fault.command("status")
@common_options
def status() -> None:
    """Show the faults set on every member of the harness."""
    injector = _injector()
    members = injector.harness.members
    current = [injector.fault(member) for member in members]
    lost = [injector.token_lost(member) for member in members]
    rows = [{"member": member.name, "faults_available": member.faults,
             "fault": found.as_dict() if found is not None else None, "token_lost": gone}
            for member, found, gone in zip(members, current, lost, strict=True)]

    def show() -> None:
        for member, found, gone in zip(members, current, lost, strict=True):
            parts = [found.describe()] if found is not None else []
            if gone:
                parts.append("token lost")
            if not member.faults:
                parts.append("no shim: lose-token only")
            click.echo(f"{member.name}: {'; '.join(parts) or 'healthy'}")

    emit({"members": rows}, show)
