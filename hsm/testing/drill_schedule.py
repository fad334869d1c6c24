"""Drill schedules: which fault hits which member when (``3s:hsm-b=device-error,...``).

Fault kinds: ``device-error``, ``device-removed``, ``token-not-present``,
``session-handle-invalid``, ``function-failed``, ``hang``, ``lose-token``, ``finalize``
(the module finalized under the client), ``heal``. :mod:`hsm.testing.drill` applies them.
"""

from __future__ import annotations

from dataclasses import dataclass

from hsm.errors import InvalidInput

__all__ = ["ACTIONS", "ERROR_FAULTS", "DrillEvent", "default_schedule", "parse_schedule"]

ERROR_FAULTS = {
    "device-error": "DEVICE_ERROR",
    "device-removed": "DEVICE_REMOVED",
    "token-not-present": "TOKEN_NOT_PRESENT",
    "session-handle-invalid": "SESSION_HANDLE_INVALID",
    "function-failed": "FUNCTION_FAILED",
}
ACTIONS = (*ERROR_FAULTS, "hang", "lose-token", "finalize", "heal")


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


def default_schedule(members: list[str], duration: float) -> list[DrillEvent]:
    """Every fault kind, each healed, the primary lost last; spread over ``duration``."""
    first = members[0]
    others = members[1:] or members
    plan = [(first if len(members) == 1 else others[0], "device-error"),
            (others[-1], "hang"),
            (others[0], "session-handle-invalid"),
            (others[-1], "function-failed"),
            (first, "lose-token"),
            (others[0], "finalize")]
    step = duration / (len(plan) * 2 + 1)
    events = []
    for i, (member, action) in enumerate(plan):
        events.append(DrillEvent(round(step * (2 * i + 1), 2), member, action))
        events.append(DrillEvent(round(step * (2 * i + 2), 2), member, "heal"))
    return events
