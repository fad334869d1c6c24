"""Logical keys: their states, versions, names and the rules AWS KMS users already know.

A logical key (a *KMS key*) has a UUID, an ARN (``arn:hsm:<store>:<account>:key/<id>``),
aliases (``alias/NAME``), a description, tags, a key spec and usage, a state, and one or
more versions. Each version is one HSM object on the key's key store (``hsm/<id>/v<N>``
on every member of that cluster); the highest version seals new data, every older one
still opens what it sealed, unless it is below ``min_decryption_version`` (Vault's
control) or trimmed.

States, with AWS's names (the stored state; :func:`effective_state` adds
``Unavailable``)::

    Creating --(placed on the quorum)--> Enabled <--enable/disable--> Disabled
    Enabled, Disabled --schedule_key_deletion--> PendingDeletion
    PendingDeletion --cancel_key_deletion--> Disabled          (as AWS does)
    PendingDeletion --(window over; maintenance destroyed it)--> Deleted

``Unavailable`` is not stored: an ``Enabled`` or ``Disabled`` key whose key store can't
reach enough members shows as ``Unavailable`` until the store is back, then shows its
stored state again (AWS's custom key stores behave so). ``Deleted`` is ours: AWS forgets
a deleted key; we keep its record so that data under it fails with "deleted on <date>"
and so that destruction still pending on a member is remembered.

Only an ``Enabled`` key may be used for cryptography (:func:`require_usable`); each other
state has its own typed error.
"""

from __future__ import annotations

import enum
import re
import uuid
from dataclasses import dataclass

from hsm.errors import (
    InvalidInput,
    KeyDisabled,
    KeyNotFound,
    KeyPendingDeletion,
    KeyStateError,
    KeyUnavailable,
    Reason,
)

__all__ = [
    "ALIAS_PREFIX",
    "DELETION_WINDOW_DAYS",
    "ROTATION_PERIOD_DAYS",
    "KeySpec",
    "KeyState",
    "KeyUsage",
    "VersionOrigin",
    "VersionState",
    "check_alias_name",
    "check_deletion_window",
    "check_key_id",
    "check_rotation_period",
    "effective_state",
    "require_state",
    "require_usable",
]

ALIAS_PREFIX = "alias/"
#: AWS's alias names: ``alias/`` then letters, digits, ``/ _ -``; at most 256 characters in
#: all; ``alias/aws/`` is reserved for AWS-managed keys.
_ALIAS = re.compile(r"alias/[A-Za-z0-9/_-]{1,250}")
_RESERVED_ALIAS = "alias/aws/"

#: ``schedule_key_deletion`` windows (days), inclusive, and the default (AWS's).
DELETION_WINDOW_DAYS = (7, 30)
DEFAULT_DELETION_WINDOW_DAYS = 30
#: Automatic rotation periods (days), inclusive, and the default (AWS's).
ROTATION_PERIOD_DAYS = (90, 2560)
DEFAULT_ROTATION_PERIOD_DAYS = 365
#: On-demand rotations per key (AWS: 25; RotateKeyOnDemand past it: LimitExceeded).
MAX_ON_DEMAND_ROTATIONS = 25


class KeyState(enum.StrEnum):
    """A key's state, with AWS's names (plus ``Deleted``, kept after destruction)."""

    CREATING = "Creating"
    ENABLED = "Enabled"
    DISABLED = "Disabled"
    PENDING_DELETION = "PendingDeletion"
    UNAVAILABLE = "Unavailable"  # never stored: see effective_state
    DELETED = "Deleted"


class KeySpec(enum.StrEnum):
    """What the key is (AWS's ``KeySpec``); the issue on asymmetric keys adds more."""

    SYMMETRIC_DEFAULT = "SYMMETRIC_DEFAULT"


class KeyUsage(enum.StrEnum):
    ENCRYPT_DECRYPT = "ENCRYPT_DECRYPT"


class VersionOrigin(enum.StrEnum):
    """How a version came to be (``list_key_rotations`` shows it)."""

    CREATE = "CREATE"  # the key's first version
    AUTOMATIC = "AUTOMATIC"  # rotation on its period, by maintenance
    ON_DEMAND = "ON_DEMAND"  # rotate_key
    IMPORTED = "IMPORTED"  # an HSM key of before the KMS layer (store import-existing)


class VersionState(enum.StrEnum):
    ACTIVE = "Active"  # on the HSMs, opens what it sealed (unless below the minimum)
    TRIMMED = "Trimmed"  # destroyed on request (trim): below the minimum for good
    DESTROYED = "Destroyed"  # destroyed with its key after the deletion window


#: The stored states each operation accepts. Cryptography: Enabled only.
_ENABLE_FROM = frozenset({KeyState.ENABLED, KeyState.DISABLED})


def effective_state(stored: KeyState, *, keystore_connected: bool) -> KeyState:
    """The state callers see: ``Unavailable`` for an Enabled or Disabled key whose key
    store can't reach enough members; otherwise the stored state."""
    if not keystore_connected and stored in _ENABLE_FROM:
        return KeyState.UNAVAILABLE
    return stored


def require_usable(state: KeyState, key_id: str, *, deleted_on: str | None = None) -> None:
    """Refuse cryptography on a key that is not ``Enabled``, each state with its error."""
    if state is KeyState.ENABLED:
        return
    if state is KeyState.DISABLED:
        raise KeyDisabled(f"key {key_id} is disabled")
    if state is KeyState.PENDING_DELETION:
        raise KeyPendingDeletion(f"key {key_id} is pending deletion")
    if state is KeyState.UNAVAILABLE:
        raise KeyUnavailable(f"key {key_id} is unavailable: its key store can't reach "
                             "enough members")
    if state is KeyState.DELETED:
        raise KeyNotFound(f"key {key_id} was deleted"
                          + (f" on {deleted_on}" if deleted_on else ""),
                          reason=Reason.KEY_DELETED)
    raise KeyStateError(f"key {key_id} is {state.value}")


def require_state(state: KeyState, allowed: frozenset[KeyState], key_id: str,
                  action: str) -> None:
    """Refuse a management call the key's state does not allow (AWS:
    ``KMSInvalidStateException``), naming the state and what it allows."""
    if state in allowed:
        return
    if state is KeyState.DELETED:
        require_usable(state, key_id)
    if state is KeyState.UNAVAILABLE:
        require_usable(state, key_id)
    names = ", ".join(sorted(s.value for s in allowed))
    raise KeyStateError(f"{action}: key {key_id} is {state.value} (allowed in: {names})")


def check_key_id(text: str) -> str:
    """A key id in canonical form (lower-case UUID), or :class:`InvalidInput`."""
    try:
        return str(uuid.UUID(text))
    except (ValueError, AttributeError, TypeError):
        raise InvalidInput(f"{text!r} is not a key id, key ARN, alias name or alias ARN") \
            from None


def check_alias_name(name: str) -> str:
    """An alias name by AWS's rules (``alias/`` + letters, digits, ``/_-``; not
    ``alias/aws/...``), or :class:`InvalidInput` saying which rule it breaks."""
    if not isinstance(name, str) or not name.startswith(ALIAS_PREFIX):
        raise InvalidInput(f"alias name {name!r} must begin with 'alias/'")
    if not _ALIAS.fullmatch(name):
        raise InvalidInput(f"alias name {name!r} may hold only letters, digits, '/', '_' and "
                           "'-' after 'alias/', 1 to 250 of them")
    if name.startswith(_RESERVED_ALIAS):
        raise InvalidInput(f"alias name {name!r}: 'alias/aws/' is reserved")
    return name


def check_deletion_window(days: int | None) -> int:
    """``schedule_key_deletion``'s window: 7 to 30 days (default 30); anything else is
    :class:`InvalidInput` naming the bounds."""
    if days is None:
        return DEFAULT_DELETION_WINDOW_DAYS
    low, high = DELETION_WINDOW_DAYS
    if isinstance(days, bool) or not isinstance(days, int) or not low <= days <= high:
        raise InvalidInput(f"the deletion window must be {low} to {high} days, not {days!r}")
    return days


def check_rotation_period(days: int | None) -> int:
    """``enable_key_rotation``'s period: 90 to 2560 days (default 365)."""
    if days is None:
        return DEFAULT_ROTATION_PERIOD_DAYS
    low, high = ROTATION_PERIOD_DAYS
    if isinstance(days, bool) or not isinstance(days, int) or not low <= days <= high:
        raise InvalidInput(f"the rotation period must be {low} to {high} days, not {days!r}")
    return days


@dataclass(frozen=True)
class KeyVersionInfo:
    """One version of a key, as ``list_key_rotations`` shows it."""

    version: int
    created_at: int  # microseconds since the epoch, UTC
    origin: VersionOrigin
    state: VersionState
    kcv: str
