"""Logical keys: AWS's names and bounds, the states a key may be used in, and the error each
other state gets."""

from __future__ import annotations

import uuid

import pytest

from hsm import errors as e
from hsm.errors import Reason
from hsm.kms.keys import (
    KeyState,
    check_alias_name,
    check_deletion_window,
    check_key_id,
    check_rotation_period,
    effective_state,
    require_state,
    require_usable,
)

KEY = str(uuid.uuid4())


@pytest.mark.parametrize("name", ["alias/app", "alias/a/b_c-D9", "alias/" + "x" * 250])
def test_good_alias_names(name: str) -> None:
    """Alias names by AWS's rules are accepted as they are."""
    assert check_alias_name(name) == name


@pytest.mark.parametrize(("name", "why"), [
    ("app", "must begin with 'alias/'"),
    ("alias/", "may hold only"),
    ("alias/a b", "may hold only"),
    ("alias/é", "may hold only"),
    ("alias/" + "x" * 251, "may hold only"),
    ("alias/aws/s3", "reserved"),
])
def test_bad_alias_names(name: str, why: str) -> None:
    """A bad alias name is InvalidInput saying which rule it breaks."""
    with pytest.raises(e.InvalidInput, match=why):
        check_alias_name(name)


@pytest.mark.parametrize("days", [6, 31, 0, -7, True])
def test_deletion_windows_out_of_bounds(days: int) -> None:
    """A deletion window of 6 or 31 days (or nonsense) is refused, naming 7 to 30."""
    with pytest.raises(e.InvalidInput, match="7 to 30 days"):
        check_deletion_window(days)


def test_deletion_window_bounds_and_default() -> None:
    """7 and 30 are accepted; no window means 30, as in AWS."""
    assert [check_deletion_window(d) for d in (7, 30, None)] == [7, 30, 30]


def test_rotation_period_bounds_and_default() -> None:
    """Rotation periods run 90 to 2560 days; the default is 365."""
    assert [check_rotation_period(d) for d in (90, 2560, None)] == [90, 2560, 365]
    for days in (89, 2561):
        with pytest.raises(e.InvalidInput, match="90 to 2560 days"):
            check_rotation_period(days)


def test_key_ids_are_canonical_uuids() -> None:
    """A key id is a UUID, given back in lower case; anything else is InvalidInput."""
    assert check_key_id(KEY.upper()) == KEY
    with pytest.raises(e.InvalidInput, match="not a key id"):
        check_key_id("my-key")


@pytest.mark.parametrize(("state", "error"), [
    (KeyState.DISABLED, e.KeyDisabled),
    (KeyState.PENDING_DELETION, e.KeyPendingDeletion),
    (KeyState.UNAVAILABLE, e.KeyUnavailable),
    (KeyState.CREATING, e.KeyStateError),
])
def test_only_enabled_keys_are_usable(state: KeyState, error: type[Exception]) -> None:
    """Each state but Enabled refuses cryptography with its own typed error."""
    require_usable(KeyState.ENABLED, KEY)
    with pytest.raises(error, match=KEY):
        require_usable(state, KEY)


def test_a_deleted_key_is_not_found_with_its_date() -> None:
    """Data under a deleted key fails with KeyNotFound naming the key and the date."""
    with pytest.raises(e.KeyNotFound, match=f"key {KEY} was deleted on 2027-01-31") as caught:
        require_usable(KeyState.DELETED, KEY, deleted_on="2027-01-31")
    assert caught.value.reason is Reason.KEY_DELETED


def test_unavailable_is_derived_from_the_key_store() -> None:
    """Enabled and Disabled keys of a disconnected key store show as Unavailable; a key
    pending deletion stays PendingDeletion (as in AWS)."""
    assert effective_state(KeyState.ENABLED, keystore_connected=False) is KeyState.UNAVAILABLE
    assert effective_state(KeyState.DISABLED, keystore_connected=False) is KeyState.UNAVAILABLE
    assert effective_state(KeyState.PENDING_DELETION, keystore_connected=False) \
        is KeyState.PENDING_DELETION
    assert effective_state(KeyState.ENABLED, keystore_connected=True) is KeyState.ENABLED


def test_management_calls_name_the_state_and_what_is_allowed() -> None:
    """A management call in a state that forbids it is KeyStateError naming both."""
    allowed = frozenset({KeyState.ENABLED, KeyState.DISABLED})
    require_state(KeyState.DISABLED, allowed, KEY, "enable_key")
    with pytest.raises(e.KeyStateError,
                       match=r"enable_key: key .* is PendingDeletion \(allowed in: Disabled, "
                             r"Enabled\)"):
        require_state(KeyState.PENDING_DELETION, allowed, KEY, "enable_key")
