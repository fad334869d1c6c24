"""The failover policy: an immutable value that decides from the error and the history."""

from __future__ import annotations

import pytest

import hsm
from hsm.cluster.operations import Operation
from hsm.cluster.policy import Attempt, Decision, FailoverPolicy, exhausted

DEVICE = hsm.HSMUnavailable("x", reason=hsm.Reason.DEVICE_ERROR)
BAD = hsm.InvalidCiphertext("x")
MISSING = hsm.KeyNotFound("x", reason=hsm.Reason.KEY_NOT_FOUND)
CONTEXT = hsm.InvalidContext("x")


def _tried(policy: FailoverPolicy, member: str, error: hsm.HSMError) -> FailoverPolicy:
    from hsm.cluster.policy import outcome_of

    return policy.increment(Attempt(member, outcome_of(error), error.reason, 1.0))


def test_increment_returns_a_new_policy() -> None:
    """increment() leaves the old policy as it was and appends to the new one's history."""
    first = FailoverPolicy(Operation.UNWRAP)
    second = _tried(first, "a", DEVICE)
    assert first.history == ()
    assert [a.member for a in second.history] == ["a"]
    assert second.tried == {"a"}


@pytest.mark.parametrize("op", [o for o in Operation if o.idempotent])
def test_idempotent_calls_move_on_after_transient_errors(op: Operation) -> None:
    """A transient error or a key missing on one member sends an idempotent call on."""
    policy = _tried(FailoverPolicy(op), "a", DEVICE)
    assert policy.decide(DEVICE) is Decision.NEXT_MEMBER
    assert policy.decide(MISSING) is Decision.NEXT_MEMBER


@pytest.mark.parametrize("op", [Operation.CREATE_KEY, Operation.DESTROY_KEY])
def test_state_changing_calls_are_never_repeated(op: Operation) -> None:
    """Create and destroy raise on any error: they are never blindly repeated elsewhere."""
    policy = _tried(FailoverPolicy(op), "a", DEVICE)
    assert not op.idempotent
    assert policy.decide(DEVICE) is Decision.RAISE


def test_business_errors_raise_at_once() -> None:
    """A bad context (or any permanent error) is the caller's: it is not tried elsewhere."""
    policy = _tried(FailoverPolicy(Operation.UNWRAP), "a", CONTEXT)
    assert policy.decide(CONTEXT) is Decision.RAISE


def test_integrity_is_checked_on_the_other_members() -> None:
    """A "does not verify" is checked on every other member (two faulty members must not
    outvote a good one); it stands once members run out."""
    one = _tried(FailoverPolicy(Operation.UNWRAP), "a", BAD)
    assert one.decide(BAD) is Decision.VERIFY_ELSEWHERE
    two = _tried(one, "b", BAD)
    assert two.decide(BAD) is Decision.VERIFY_ELSEWHERE
    assert isinstance(exhausted(two, BAD), hsm.InvalidCiphertext)


def test_exhaustion_carries_every_attempt() -> None:
    """When members run out after transient errors, the error lists every attempt."""
    policy = _tried(_tried(FailoverPolicy(Operation.WRAP), "a", DEVICE), "b", DEVICE)
    error = exhausted(policy, DEVICE)
    assert isinstance(error, hsm.ClusterUnavailable)
    assert [a.member for a in error.attempts] == ["a", "b"]
    assert "a: transient" in str(error)
    assert "b: transient" in str(error)
    assert error.transient


def test_exhaustion_believes_agreeing_members() -> None:
    """An unchallenged integrity verdict stays InvalidCiphertext; all members saying a key
    does not exist stays KeyNotFound; a missing key beside a broken member is transient."""
    bad = _tried(FailoverPolicy(Operation.UNWRAP), "a", BAD)
    assert isinstance(exhausted(_tried(bad, "b", DEVICE), DEVICE), hsm.InvalidCiphertext)
    missing = _tried(_tried(FailoverPolicy(Operation.UNWRAP), "a", MISSING), "b", MISSING)
    assert isinstance(exhausted(missing, MISSING), hsm.KeyNotFound)
    mixed = _tried(_tried(FailoverPolicy(Operation.UNWRAP), "a", MISSING), "b", DEVICE)
    assert isinstance(exhausted(mixed, DEVICE), hsm.ClusterUnavailable)
