"""The package's exceptions: one root, each error marked transient, permanent or integrity.

Every error the public API raises is an :class:`HSMError`. Errors that come from bad input
also subclass the matching builtin (``ValueError``, ``LookupError``), so generic handlers work.
Each class carries a :class:`Kind`:

- ``TRANSIENT``: the HSM (or the path to it) is in trouble; the same call may succeed later or
  on another member. Only the cluster layer retries or fails over, never a lower layer.
- ``PERMANENT``: the request itself is wrong (unknown key, bad PIN, bad argument); repeating it
  anywhere gives the same answer.
- ``INTEGRITY``: the ciphertext, the key or the context does not verify. Callers see the opaque
  :class:`InvalidCiphertext`; the detail stays in ``reason``.

Messages never contain key material, plaintext or PINs.

The tree::

    HSMError                                  (root, kind given per class)
    ├── ConfigError            ValueError     permanent  config missing, unreadable or invalid
    ├── PinError                              permanent
    │   ├── PinSourceError     ValueError     permanent  env var unset, PIN file unreadable, ...
    │   └── PinIncorrect                      permanent  the HSM refused the PIN; never retried
    ├── ModuleLoadError                       permanent  the PKCS#11 module can't be loaded
    ├── TokenNotFound          LookupError    permanent  no token with that label/serial
    ├── KeyNotFound            LookupError    permanent  no master key with that id/version
    ├── UnsafeKey                             permanent  key attributes break policy
    ├── InvalidContext         ValueError     permanent  encryption context not str -> str
    ├── InvalidInput           ValueError     permanent  other bad arguments (key length, ...)
    ├── MechanismUnsupported                  permanent  the module lacks a needed mechanism
    ├── OperationFailed                       permanent  the HSM refused for another reason
    ├── HSMUnavailable                        transient  device error, session or token lost
    │   ├── ClusterUnavailable                transient  every member tried; carries .attempts
    │   └── QuorumNotReached                  transient  a new key reached too few members
    ├── ReplicationError                      permanent  copies of a key disagree (KCV)
    └── InvalidCiphertext      ValueError     integrity  tampered, wrong key, wrong context
        └── ContextMismatch    ValueError     integrity  the caller's context is not the
                                                         message's (says which keys differ)
"""

from __future__ import annotations

import enum
from typing import Any

__all__ = [
    "ClusterUnavailable",
    "ConfigError",
    "ContextMismatch",
    "HSMError",
    "HSMUnavailable",
    "InvalidCiphertext",
    "InvalidContext",
    "InvalidInput",
    "KeyNotFound",
    "Kind",
    "MechanismUnsupported",
    "ModuleLoadError",
    "OperationFailed",
    "PinError",
    "PinIncorrect",
    "PinSourceError",
    "QuorumNotReached",
    "ReplicationError",
    "TokenNotFound",
    "UnsafeKey",
]


class Kind(enum.Enum):
    """How an error should be treated by whoever decides about retries."""

    TRANSIENT = "transient"
    PERMANENT = "permanent"
    INTEGRITY = "integrity"


class HSMError(Exception):
    """Root of every error this package raises.

    ``reason`` is a short machine-readable word (``"device_error"``, ``"tampered"``...),
    ``kind`` says whether the error is transient, permanent or an integrity failure.
    """

    kind: Kind = Kind.PERMANENT
    default_reason = "error"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason

    @property
    def transient(self) -> bool:
        return self.kind is Kind.TRANSIENT


class ConfigError(HSMError, ValueError):
    """The configuration file is missing, unreadable or invalid."""

    default_reason = "config"


class PinError(HSMError):
    """Base of the PIN problems."""

    default_reason = "pin"


class PinSourceError(PinError, ValueError):
    """The PIN source named in the config gives no PIN (unset variable, unreadable file)."""

    default_reason = "pin_source"


class PinIncorrect(PinError):
    """The HSM refused the PIN. Never retried: real HSMs lock the account."""

    default_reason = "pin_incorrect"


class ModuleLoadError(HSMError):
    """The PKCS#11 module could not be loaded or initialized."""

    default_reason = "module_load"


class TokenNotFound(HSMError, LookupError):
    """No token with the requested label or serial; the message lists the tokens that exist."""

    default_reason = "token_not_found"


class KeyNotFound(HSMError, LookupError):
    """No master key with that id (and version) on the HSM."""

    default_reason = "key_not_found"


class UnsafeKey(HSMError):
    """A master key's attributes break policy (extractable, not sensitive, ...)."""

    default_reason = "unsafe_key"


class InvalidContext(HSMError, ValueError):
    """The encryption context is not a ``str -> str`` mapping within bounds."""

    default_reason = "invalid_context"


class InvalidInput(HSMError, ValueError):
    """An argument is malformed (a key of the wrong length, a bad key id...)."""

    default_reason = "invalid_input"


class MechanismUnsupported(HSMError):
    """The module does not implement a mechanism this operation needs."""

    default_reason = "mechanism_unsupported"


class OperationFailed(HSMError):
    """The HSM refused the operation for a reason that repeating will not fix."""

    default_reason = "operation_failed"


class HSMUnavailable(HSMError):
    """The HSM, its session or its token is lost or failing; may succeed later or elsewhere."""

    kind = Kind.TRANSIENT
    default_reason = "unavailable"


class ClusterUnavailable(HSMUnavailable):
    """Every member that could serve the call failed. ``attempts`` lists each try
    (member, outcome, reason, milliseconds), oldest first."""

    default_reason = "cluster_unavailable"

    def __init__(self, message: str, *, reason: str | None = None,
                 attempts: tuple[Any, ...] = ()) -> None:
        super().__init__(message, reason=reason)
        self.attempts = attempts


class QuorumNotReached(HSMUnavailable):
    """A new key could not be placed on ``quorum`` members; it was rolled back."""

    default_reason = "quorum_not_reached"


class ReplicationError(HSMError):
    """Copies of one key on different members do not match (their KCVs differ)."""

    default_reason = "replication"


class InvalidCiphertext(HSMError, ValueError):
    """The ciphertext does not verify: tampered, truncated, wrong key or wrong context.

    The message stays deliberately vague; ``reason`` tells which check failed.
    """

    kind = Kind.INTEGRITY
    default_reason = "invalid_ciphertext"


class ContextMismatch(InvalidCiphertext):
    """The context the caller expects is not the one the message was encrypted with.

    Unlike a bare "does not verify", this says so, and which context keys differ (the
    context is not secret: it travels in the clear in the message header)."""

    default_reason = "context_mismatch"
