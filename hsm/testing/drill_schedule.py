"""Drill schedules: which fault hits which member when (``3s:hsm-b=device-error,...``).

Fault kinds: ``device-error``, ``device-removed``, ``token-not-present``,
``session-handle-invalid``, ``function-failed``, ``hang``, ``lose-token``, ``finalize``
(the module finalized under the client), ``heal``. :mod:`hsm.testing.drill` applies them.

A drill needs a member serving at every moment (it proves that failover loses nothing, and
with every member broken every call fails): :func:`check_schedule` refuses a schedule that
faults every member at once, and the default schedule never does. A fault lasts until its
member's ``heal``, except ``finalize``, which the client repairs by itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import groupby

from hsm.errors import InvalidInput

__all__ = ["ACTIONS", "ERROR_FAULTS", "MOMENTARY", "DrillEvent", "check_schedule",
           "default_schedule", "parse_schedule"]

ERROR_FAULTS = {
    "device-error": "DEVICE_ERROR",
    "device-removed": "DEVICE_REMOVED",
    "token-not-present": "TOKEN_NOT_PRESENT",
    "session-handle-invalid": "SESSION_HANDLE_INVALID",
    "function-failed": "FUNCTION_FAILED",
}
ACTIONS = (*ERROR_FAULTS, "hang", "lose-token", "finalize", "heal")
#: Faults that need no heal: the client recovers from them by itself.
MOMENTARY = frozenset({"finalize"})
_TWO_MEMBERS = ("a drill needs at least 2 members: it faults members while another one "
                "serves (with one member every fault fails every call)")


@dataclass(frozen=True)
class DrillEvent:
    at: float  # seconds from the start
    member: str
    action: str

    def __str__(self) -> str:
        return f"{self.at:g}s:{self.member}={self.action}"


def parse_schedule(spec: str, members: list[str]) -> list[DrillEvent]:
    """``"3s:hsm-b=device-error,8s:hsm-b=heal"`` -> events; InvalidInput on a bad item."""
    events = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        when, sep, rest = item.partition(":")
        member, sep2, action = rest.partition("=")
        try:
            at = float(when.removesuffix("s"))
        except ValueError:
            at = -1.0
        if not sep or not sep2 or at < 0:
            raise InvalidInput(f"schedule item {item!r} is not TIME:MEMBER=ACTION (e.g. "
                               "3s:hsm-b=device-error)")
        if member not in members:
            raise InvalidInput(f"schedule item {item!r}: no member {member!r} "
                               f"(members: {', '.join(members)})")
        if action not in ACTIONS:
            raise InvalidInput(f"schedule item {item!r}: unknown action {action!r} "
                               f"(one of {', '.join(ACTIONS)})")
        events.append(DrillEvent(at, member, action))
    return sorted(events, key=lambda e: e.at)


def check_schedule(events: list[DrillEvent], members: list[str]) -> None:
    """InvalidInput if ``events`` (in time order) leave no member without a fault at some
    moment, or there are fewer than 2 members."""
    if len(members) < 2:
        raise InvalidInput(_TWO_MEMBERS)
    faulted: set[str] = set()
    for at, group in groupby(events, key=lambda e: e.at):
        for event in group:
            if event.action == "heal":
                faulted.discard(event.member)
            elif event.action not in MOMENTARY:
                faulted.add(event.member)
        if faulted >= set(members):
            raise InvalidInput(
                f"the schedule leaves no member serving at {at:g}s ({', '.join(sorted(faulted))} "
                f"all faulted): heal one before faulting the last")


def default_schedule(members: list[str], duration: float) -> list[DrillEvent]:
    """Every fault kind, each healed before the next, spread over ``duration``: members
    other than the primary first, the primary's token lost last. Needs 2 members."""
    if len(members) < 2:
        raise InvalidInput(_TWO_MEMBERS)
    first, others = members[0], members[1:]
    plan = [(others[0], "device-error"),
            (others[-1], "hang"),
            (others[0], "session-handle-invalid"),
            (others[-1], "function-failed"),
            (others[0], "finalize"),
            (first, "lose-token")]
    step = duration / (len(plan) * 2 + 1)
    events = []
    for i, (member, action) in enumerate(plan):
        events.append(DrillEvent(round(step * (2 * i + 1), 2), member, action))
        events.append(DrillEvent(round(step * (2 * i + 2), 2), member, "heal"))
    return events
