"""The one failover policy: which errors move a call to another member, and which don't.

:class:`FailoverPolicy` is an immutable value. Each try is recorded with
:meth:`FailoverPolicy.increment`, which returns a new policy whose ``history`` has the
attempt appended; :meth:`FailoverPolicy.decide` says what to do next:

=================================  ===========================  ==========================
error on a member                  idempotent call              not idempotent
=================================  ===========================  ==========================
transient (device, session, hang)  try the next member          raise (never repeated
                                                                blindly elsewhere)
integrity (does not verify)        ask every other member; it   raise
                                   stands if none opens it
malformed (refused by its          raise (every member would    raise
structure, before any HSM call)    refuse it alike)
key not found on that member       try the next member (the     raise
                                   key may not have reached it)
PIN refused (member disabled)      try the next member          raise
other permanent (bad input, PIN)   raise                        raise
=================================  ===========================  ==========================

Whether a call is idempotent is the :class:`~hsm.cluster.operations.Operation`'s to say.
When members run out, :func:`exhausted` builds the error that carries every attempt.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from hsm.cluster.operations import Operation
from hsm.errors import (
    ClusterUnavailable,
    HSMError,
    InvalidCiphertext,
    KeyNotFound,
    Kind,
    PinError,
    Reason,
)

__all__ = ["Attempt", "Decision", "FailoverPolicy", "Outcome", "exhausted", "outcome_of"]


class Outcome(enum.StrEnum):
    """How one attempt on one member ended (values are the words logs and drills show)."""

    OK = "ok"
    TRANSIENT = "transient"
    TIMEOUT = "timeout"  # no answer within the deadline
    INTEGRITY = "integrity"  # "does not verify"
    KEY_NOT_FOUND = "key_not_found"
    PERMANENT = "permanent"


class Decision(enum.Enum):
    NEXT_MEMBER = "next_member"  # a transient failure: the call moves on
    VERIFY_ELSEWHERE = "verify_elsewhere"  # a member says "does not verify": ask another
    RAISE = "raise"


@dataclass(frozen=True, slots=True)
class Attempt:
    """One try of one call on one member. Holds no data, only what happened."""

    member: str
    outcome: Outcome
    reason: Reason
    ms: float

    def __str__(self) -> str:
        return f"{self.member}: {self.outcome} ({self.reason}, {self.ms:.0f} ms)"


def outcome_of(error: HSMError) -> Outcome:
    if isinstance(error, KeyNotFound):
        return Outcome.KEY_NOT_FOUND
    if error.reason is Reason.DEADLINE:
        return Outcome.TIMEOUT
    return _OUTCOME_BY_KIND[error.kind]


_OUTCOME_BY_KIND = {Kind.TRANSIENT: Outcome.TRANSIENT, Kind.INTEGRITY: Outcome.INTEGRITY,
                    Kind.PERMANENT: Outcome.PERMANENT}


@dataclass(frozen=True, slots=True)
class FailoverPolicy:
    """What has been tried for one call, and the rule for what comes next."""

    operation: Operation
    history: tuple[Attempt, ...] = ()

    def increment(self, attempt: Attempt) -> FailoverPolicy:
        return FailoverPolicy(self.operation, (*self.history, attempt))

    @property
    def tried(self) -> frozenset[str]:
        return frozenset(a.member for a in self.history)

    def decide(self, error: HSMError) -> Decision:
        outcome = outcome_of(error)
        if not self.operation.idempotent:
            return Decision.RAISE
        if isinstance(error, PinError):
            return Decision.NEXT_MEMBER  # that member is disabled; the call is not at fault
        if outcome in (Outcome.TRANSIENT, Outcome.TIMEOUT, Outcome.KEY_NOT_FOUND):
            return Decision.NEXT_MEMBER
        if outcome is Outcome.INTEGRITY:
            if error.reason is Reason.MALFORMED:
                # Refused by its structure before any HSM call: the same on every member.
                return Decision.RAISE
            return Decision.VERIFY_ELSEWHERE
        return Decision.RAISE


def exhausted(policy: FailoverPolicy, last: HSMError | None) -> HSMError:
    """The error to raise when no member is left to try.

    A "does not verify" that no member contradicted stands (a member that could not
    answer is no contradiction); so do members that all agree a key does not exist.
    Anything else failed for want of a working member.
    """
    outcomes = {a.outcome for a in policy.history}
    if last is not None and Outcome.INTEGRITY in outcomes:
        if isinstance(last, InvalidCiphertext):
            return last
        return InvalidCiphertext("ciphertext does not verify", reason=Reason.INTEGRITY)
    if last is not None and outcomes == {Outcome.KEY_NOT_FOUND}:
        if len(policy.history) == 1:
            return last
        asked = ", ".join(a.member for a in policy.history)
        return KeyNotFound(f"{last.message} (no member holds it; asked {asked})",
                           reason=last.reason)
    tried = "; ".join(str(a) for a in policy.history) or "no member was available"
    return ClusterUnavailable(
        f"{policy.operation.value} failed on every member: {tried}",
        attempts=policy.history,
    )
