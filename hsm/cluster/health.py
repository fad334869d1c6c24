"""Health of one member: a small circuit breaker with an injected clock.

States (:class:`State`):

- ``HEALTHY``: serves calls.
- ``SUSPECT``: a call to it outlived the deadline and is still running; it gets no new work
  until every such call has returned. Then its probe is due at once: it serves again only
  once it has been brought up to date (it may have missed keys meanwhile), like a member
  coming back from ``DOWN``; a late answer that was an error makes it ``DOWN``.
- ``DOWN``: a transient error; no work until a probe succeeds and the member has been
  brought up to date. Probes back off from ``probe_interval`` to ``max_probe_interval``.
- ``DISABLED``: the token refused the PIN (or the PIN source gives none). Out of service for
  good: never probed, never logged in again (real HSMs lock the account), until the config
  is fixed and the process restarted.

Business errors (bad context, unknown key) never change the state. The lock is held only to
change state, never around a call to the member.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable
from dataclasses import dataclass

from hsm.errors import Reason

__all__ = ["Health", "State", "Transition"]


class State(enum.Enum):
    HEALTHY = "healthy"
    SUSPECT = "suspect"
    DOWN = "down"
    DISABLED = "disabled"


@dataclass(frozen=True)
class Transition:
    member: str
    old: State
    new: State
    reason: Reason
    at: float


class Health:
    """One member's state, outstanding calls, hung calls and probe schedule."""

    def __init__(self, member: str, *, clock: Callable[[], float],
                 probe_interval: float = 0.5, max_probe_interval: float = 30.0,
                 on_change: Callable[[Transition], None] | None = None) -> None:
        self.member = member
        self.state = State.HEALTHY
        self.outstanding = 0  # calls in flight (routing in balanced mode)
        self.hung = 0  # calls that outlived their deadline and have not returned
        self.last_reason: Reason | None = None  # why it last changed state (hsm status)
        self.next_probe = 0.0
        self._clock = clock
        self._interval = probe_interval
        self._max_interval = max_probe_interval
        self._backoff = probe_interval
        self._lock = threading.Lock()
        self._on_change = on_change

    @property
    def serving(self) -> bool:
        return self.state is State.HEALTHY

    def _set(self, new: State, reason: Reason) -> Transition | None:
        old = self.state
        if old is new:
            return None
        self.state = new
        self.last_reason = reason
        return Transition(self.member, old, new, reason, self._clock())

    def _notify(self, change: Transition | None) -> None:
        if change is not None and self._on_change is not None:
            self._on_change(change)

    def failed(self, reason: Reason) -> None:
        """A transient error: down, first probe after ``probe_interval``."""
        with self._lock:
            if self.state is State.DISABLED:
                return
            if self.state is not State.DOWN:
                self._backoff = self._interval
            self.next_probe = self._clock() + self._backoff
            change = self._set(State.DOWN, reason)
        self._notify(change)

    def timed_out(self) -> None:
        """A call outlived its deadline and still runs: suspect until it returns."""
        with self._lock:
            self.hung += 1
            change = self._set(State.SUSPECT, Reason.DEADLINE) if self.state is State.HEALTHY \
                else None
        self._notify(change)

    def hung_call_returned(self, error_reason: Reason | None) -> None:
        """A call that had outlived its deadline has now returned (``None``: it worked)."""
        with self._lock:
            self.hung -= 1
            change = None
            if self.state is State.DISABLED:
                pass
            elif error_reason is not None:
                if self.state is not State.DOWN:
                    self._backoff = self._interval
                self.next_probe = self._clock() + self._backoff
                change = self._set(State.DOWN, error_reason)
            elif self.hung == 0 and self.state is State.SUSPECT:
                self.next_probe = self._clock()  # answered again: bring it up to date now
                self.last_reason = Reason.ANSWERED_AGAIN
        self._notify(change)

    def disabled(self, reason: Reason) -> None:
        """The PIN was refused: out of service for good (never probed again)."""
        with self._lock:
            change = self._set(State.DISABLED, reason)
        self._notify(change)

    def probe_due(self, *, now: bool = False) -> bool:
        """Whether the monitor should probe (and bring up to date) this member: it is down
        and its backoff has passed (``now``: whatever the backoff), or it was suspect and
        every hung call has returned."""
        if self.hung or self.state not in (State.DOWN, State.SUSPECT):
            return False
        return now or self._clock() >= self.next_probe

    def probe_failed(self, reason: Reason) -> None:
        with self._lock:
            self._backoff = min(self._backoff * 2, self._max_interval)
            self.next_probe = self._clock() + self._backoff
            self.last_reason = reason

    def readmitted(self) -> None:
        with self._lock:
            if self.state is State.DISABLED:
                return
            self._backoff = self._interval
            change = self._set(State.HEALTHY, Reason.READMITTED)
        self._notify(change)
