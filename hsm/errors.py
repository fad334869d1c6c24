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

This module is longer than 400 lines on purpose: the whole tree and every reason word live
in one place, so that a reader sees every error the package can raise at once.

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
    ├── KMSError                              permanent  the KMS layer's refusals:
    │   ├── KeyStateError                     permanent  the key's state forbids the call
    │   │   ├── KeyDisabled                   permanent  state Disabled
    │   │   ├── KeyPendingDeletion            permanent  state PendingDeletion
    │   │   └── KeyUnavailable                transient  its key store can't reach enough
    │   │                                                members (state Unavailable)
    │   ├── VersionRetired                    permanent  below min_decryption_version
    │   ├── AccessDenied                      permanent  no policy statement or grant allows
    │   ├── AlreadyExists                     permanent  alias (or other name) in use
    │   ├── LimitExceeded                     permanent  a KMS limit (rotations, aliases)
    │   ├── MalformedPolicy    ValueError     permanent  a key policy that does not parse
    │   └── StoreError                        permanent  the metadata store refused
    │       └── SchemaOutdated                permanent  run `hsm store upgrade`
    ├── AuditError                            integrity  the audit trail does not verify
    └── InvalidCiphertext      ValueError     integrity  tampered, wrong key, wrong context
        └── ContextMismatch    ValueError     integrity  the caller's context is not the
                                                         message's (says which keys differ)
"""

from __future__ import annotations

import enum
from typing import Any

__all__ = [
    "AccessDenied",
    "AlreadyExists",
    "AuditError",
    "ClusterUnavailable",
    "ConfigError",
    "ContextMismatch",
    "HSMError",
    "HSMUnavailable",
    "InvalidCiphertext",
    "InvalidContext",
    "InvalidInput",
    "KMSError",
    "KeyDisabled",
    "KeyNotFound",
    "KeyPendingDeletion",
    "KeyStateError",
    "KeyUnavailable",
    "Kind",
    "LimitExceeded",
    "MalformedPolicy",
    "MechanismUnsupported",
    "ModuleLoadError",
    "OperationFailed",
    "PinError",
    "PinIncorrect",
    "PinSourceError",
    "QuorumNotReached",
    "Reason",
    "ReplicationError",
    "SchemaOutdated",
    "StoreError",
    "TokenNotFound",
    "UnsafeKey",
    "VersionRetired",
]


class Kind(enum.Enum):
    """How an error should be treated by whoever decides about retries."""

    TRANSIENT = "transient"
    PERMANENT = "permanent"
    INTEGRITY = "integrity"


class Reason(enum.StrEnum):
    """Why an error (or a member's change of state) happened: a machine-readable word.

    A ``StrEnum``: each value is the word that logs, JSON output and metrics have always
    shown, so ``str(reason)`` and ``json.dumps`` are unchanged. Compare members
    (``err.reason is Reason.DEADLINE``), never message text.
    """

    ACCESS_DENIED = "access_denied"
    ALREADY_EXISTS = "already_exists"
    ALREADY_INITIALIZED = "already_initialized"
    ALREADY_LOGGED_IN = "already_logged_in"
    ANOTHER_USER_LOGGED_IN = "another_user_logged_in"
    ANSWERED_AGAIN = "answered again"
    ARGUMENTS_BAD = "arguments_bad"
    ATTRIBUTE_SENSITIVE = "attribute_sensitive"
    ATTRIBUTE_TYPE_INVALID = "attribute_type_invalid"
    ATTRIBUTE_VALUE_INVALID = "attribute_value_invalid"
    AUDIT_TAMPERED = "audit_tampered"
    CANCELLED = "cancelled"
    CLOSED = "closed"
    CLUSTER_UNAVAILABLE = "cluster_unavailable"
    COMMITMENT = "commitment"
    CONFIG = "config"
    CONTEXT_MISMATCH = "context_mismatch"
    DATA_INVALID = "data_invalid"
    DATA_LENGTH = "data_length"
    DEADLINE = "deadline"
    DEVICE_ERROR = "device_error"
    DEVICE_MEMORY = "device_memory"
    DEVICE_REMOVED = "device_removed"
    DUPLICATE_KEY = "duplicate_key"
    ENCRYPTED_DATA_INVALID = "encrypted_data_invalid"
    ENCRYPTED_DATA_LENGTH = "encrypted_data_length"
    ERROR = "error"
    FRAME_TAG = "frame_tag"
    FUNCTION_CANCELLED = "function_cancelled"
    FUNCTION_FAILED = "function_failed"
    FUNCTION_NOT_SUPPORTED = "function_not_supported"
    GENERAL_ERROR = "general_error"
    HARNESS = "harness"
    HEADER_TAG = "header_tag"
    HOST_MEMORY = "host_memory"
    HUNG_CALLS = "hung_calls"
    INTEGRITY = "integrity"
    INTEGRITY_DISAGREEMENT = "integrity_disagreement"
    INVALID_CIPHERTEXT = "invalid_ciphertext"
    INVALID_CONTEXT = "invalid_context"
    INVALID_INPUT = "invalid_input"
    KCV_MISMATCH = "kcv_mismatch"
    KEY_DELETED = "key_deleted"
    KEY_DISABLED = "key_disabled"
    KEY_EXISTS = "key_exists"
    KEY_HANDLE_INVALID = "key_handle_invalid"
    KEY_NOT_FOUND = "key_not_found"
    KEY_NOT_WRAPPABLE = "key_not_wrappable"
    KEY_PENDING_DELETION = "key_pending_deletion"
    KEY_STATE = "key_state"
    KEY_UNAVAILABLE = "key_unavailable"
    KEY_UNEXTRACTABLE = "key_unextractable"
    KMS = "kms"
    LIMIT_EXCEEDED = "limit_exceeded"
    MALFORMED = "malformed"
    MALFORMED_POLICY = "malformed_policy"
    MECHANISM_INVALID = "mechanism_invalid"
    MECHANISM_PARAM_INVALID = "mechanism_param_invalid"
    MECHANISM_UNSUPPORTED = "mechanism_unsupported"
    MODULE_INIT_FAILED = "module_init_failed"
    MODULE_LOAD = "module_load"
    NOT_INITIALIZED = "not_initialized"
    NOT_LOGGED_IN = "not_logged_in"
    NOT_OPEN = "not_open"
    NOT_REPLICABLE = "not_replicable"
    NO_CHECK_VALUE = "no_check_value"
    NO_MEMBER = "no_member"
    NO_WRAPPING_KEY = "no_wrapping_key"
    OBJECT_HANDLE_INVALID = "object_handle_invalid"
    OPERATION_ACTIVE = "operation_active"
    OPERATION_FAILED = "operation_failed"
    PIN = "pin"
    PIN_EXPIRED = "pin_expired"
    PIN_INCORRECT = "pin_incorrect"
    PIN_INVALID = "pin_invalid"
    PIN_LENGTH = "pin_length"
    PIN_LOCKED = "pin_locked"
    PIN_NOT_INITIALIZED = "pin_not_initialized"
    PIN_SOURCE = "pin_source"
    PKCS11_ERROR = "pkcs11_error"
    POOL_EXHAUSTED = "pool_exhausted"
    QUORUM_NOT_REACHED = "quorum_not_reached"
    READMITTED = "re-admitted"
    RECOVERING = "recovering"
    RELEASED = "released"
    REPLICATION = "replication"
    SCHEMA_OUTDATED = "schema_outdated"
    SESSION_CLOSED = "session_closed"
    SESSION_COUNT = "session_count"
    SESSION_HANDLE_INVALID = "session_handle_invalid"
    SESSION_READ_ONLY_EXISTS = "session_read_only_exists"
    STORE = "store"
    STORE_CONFLICT = "store_conflict"
    TAG = "tag"
    TEMPLATE_INCOMPLETE = "template_incomplete"
    TEMPLATE_INCONSISTENT = "template_inconsistent"
    TOKEN_LOST = "token_lost"  # noqa: S105 (a reason word, not a secret)
    TOKEN_NOT_FOUND = "token_not_found"  # noqa: S105 (a reason word, not a secret)
    TOKEN_NOT_PRESENT = "token_not_present"  # noqa: S105 (a reason word, not a secret)
    TOKEN_NOT_RECOGNISED = "token_not_recognised"  # noqa: S105 (a reason word, not a secret)
    TRAILING = "trailing"
    TRUNCATED = "truncated"
    UNAVAILABLE = "unavailable"
    UNEXPECTED = "unexpected"
    UNSAFE_KEY = "unsafe_key"
    UNWRAP_TEMPLATE_IGNORED = "unwrap_template_ignored"
    USER_ALREADY_LOGGED_IN = "user_already_logged_in"
    USER_LOGGED_IN = "user_logged_in"
    USER_TOO_MANY_TYPES = "user_too_many_types"
    VERSION_RETIRED = "version_retired"
    WRAPPED_KEY_INVALID = "wrapped_key_invalid"
    WRAPPED_KEY_LENGTH = "wrapped_key_length"
    WRAPPING_KEY_MISMATCH = "wrapping_key_mismatch"
    WRAPPING_KEY_PARTIAL = "wrapping_key_partial"
    WRAPPING_KEY_TEST_FAILED = "wrapping_key_test_failed"
    WRAPPING_KEY_UNSAFE = "wrapping_key_unsafe"
    WRAPPING_KEY_UNTRUSTED = "wrapping_key_untrusted"


class HSMError(Exception):
    """Root of every error this package raises.

    ``reason`` is a short machine-readable word (``"device_error"``, ``"tampered"``...),
    ``kind`` says whether the error is transient, permanent or an integrity failure.
    """

    kind: Kind = Kind.PERMANENT
    default_reason: Reason = Reason.ERROR

    def __init__(self, message: str, *, reason: Reason | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.reason: Reason = self.default_reason if reason is None else Reason(reason)

    @property
    def transient(self) -> bool:
        return self.kind is Kind.TRANSIENT


class ConfigError(HSMError, ValueError):
    """The configuration file is missing, unreadable or invalid."""

    default_reason = Reason.CONFIG


class PinError(HSMError):
    """Base of the PIN problems."""

    default_reason = Reason.PIN


class PinSourceError(PinError, ValueError):
    """The PIN source named in the config gives no PIN (unset variable, unreadable file)."""

    default_reason = Reason.PIN_SOURCE


class PinIncorrect(PinError):
    """The HSM refused the PIN. Never retried: real HSMs lock the account."""

    default_reason = Reason.PIN_INCORRECT


class ModuleLoadError(HSMError):
    """The PKCS#11 module could not be loaded or initialized."""

    default_reason = Reason.MODULE_LOAD


class TokenNotFound(HSMError, LookupError):
    """No token with the requested label or serial; the message lists the tokens that exist."""

    default_reason = Reason.TOKEN_NOT_FOUND


class KeyNotFound(HSMError, LookupError):
    """No master key with that id (and version) on the HSM."""

    default_reason = Reason.KEY_NOT_FOUND


class UnsafeKey(HSMError):
    """A master key's attributes break policy (extractable, not sensitive, ...)."""

    default_reason = Reason.UNSAFE_KEY


class InvalidContext(HSMError, ValueError):
    """The encryption context is not a ``str -> str`` mapping within bounds."""

    default_reason = Reason.INVALID_CONTEXT


class InvalidInput(HSMError, ValueError):
    """An argument is malformed (a key of the wrong length, a bad key id...)."""

    default_reason = Reason.INVALID_INPUT


class MechanismUnsupported(HSMError):
    """The module does not implement a mechanism this operation needs."""

    default_reason = Reason.MECHANISM_UNSUPPORTED


class OperationFailed(HSMError):
    """The HSM refused the operation for a reason that repeating will not fix."""

    default_reason = Reason.OPERATION_FAILED


class HSMUnavailable(HSMError):
    """The HSM, its session or its token is lost or failing; may succeed later or elsewhere."""

    kind = Kind.TRANSIENT
    default_reason = Reason.UNAVAILABLE


class ClusterUnavailable(HSMUnavailable):
    """Every member that could serve the call failed. ``attempts`` lists each try
    (member, outcome, reason, milliseconds), oldest first."""

    default_reason = Reason.CLUSTER_UNAVAILABLE

    def __init__(self, message: str, *, reason: Reason | None = None,
                 attempts: tuple[Any, ...] = ()) -> None:
        super().__init__(message, reason=reason)
        self.attempts = attempts


class QuorumNotReached(HSMUnavailable):
    """A new key could not be placed on ``quorum`` members; it was rolled back."""

    default_reason = Reason.QUORUM_NOT_REACHED


class ReplicationError(HSMError):
    """Copies of one key on different members do not match (their KCVs differ)."""

    default_reason = Reason.REPLICATION


class InvalidCiphertext(HSMError, ValueError):
    """The ciphertext does not verify: tampered, truncated, wrong key or wrong context.

    The message stays deliberately vague; ``reason`` tells which check failed.
    """

    kind = Kind.INTEGRITY
    default_reason = Reason.INVALID_CIPHERTEXT


class ContextMismatch(InvalidCiphertext):
    """The context the caller expects is not the one the message was encrypted with.

    Unlike a bare "does not verify", this says so, and which context keys differ (the
    context is not secret: it travels in the clear in the message header)."""

    default_reason = Reason.CONTEXT_MISMATCH


class KMSError(HSMError):
    """Base of the KMS layer's refusals (:mod:`hsm.kms`)."""

    default_reason = Reason.KMS


class KeyStateError(KMSError):
    """The key's state forbids the call (AWS: ``KMSInvalidStateException``)."""

    default_reason = Reason.KEY_STATE


class KeyDisabled(KeyStateError):
    """The key is ``Disabled`` (AWS: ``DisabledException``)."""

    default_reason = Reason.KEY_DISABLED


class KeyPendingDeletion(KeyStateError):
    """The key is ``PendingDeletion``: every use is refused, and recorded."""

    default_reason = Reason.KEY_PENDING_DELETION


class KeyUnavailable(KeyStateError):
    """The key's key store cannot reach enough members (state ``Unavailable``)."""

    kind = Kind.TRANSIENT
    default_reason = Reason.KEY_UNAVAILABLE


class VersionRetired(KMSError):
    """The ciphertext's key version is below the key's ``min_decryption_version``."""

    default_reason = Reason.VERSION_RETIRED


class AccessDenied(KMSError):
    """No key policy statement or grant allows the principal this action on this key (or
    a statement denies it). The message names the principal, the action and the key."""

    default_reason = Reason.ACCESS_DENIED


class AlreadyExists(KMSError):
    """The name (an alias, say) is already in use."""

    default_reason = Reason.ALREADY_EXISTS


class LimitExceeded(KMSError):
    """A KMS limit was reached (on-demand rotations of a key, aliases, grants...)."""

    default_reason = Reason.LIMIT_EXCEEDED


class MalformedPolicy(KMSError, ValueError):
    """A key policy that does not parse or breaks the grammar; the message says where."""

    default_reason = Reason.MALFORMED_POLICY


class StoreError(KMSError):
    """The metadata store could not be used (unreachable, refused, wrong schema)."""

    default_reason = Reason.STORE


class SchemaOutdated(StoreError):
    """The store's schema is older (or newer) than this version of hsm: run
    ``hsm store upgrade``."""

    default_reason = Reason.SCHEMA_OUTDATED


class AuditError(HSMError):
    """The audit trail does not verify (a record edited, deleted, inserted, reordered, the
    tail cut, or a MAC not made by the HSM); the message says where."""

    kind = Kind.INTEGRITY
    default_reason = Reason.AUDIT_TAMPERED
