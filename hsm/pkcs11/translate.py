"""The one place where ``pkcs11`` exceptions become this package's errors.

``translated(operation)`` is a context manager; every call into python-pkcs11 made by this
package runs inside one. The table is read top to bottom, most specific first. Each row
gives the error class, the ``reason`` word, and for transient errors what the session pool
must do to recover (``Recovery``).

On SoftHSM a tampered blob, a wrong key, a wrong GCM tag or AAD all come back as
``GeneralError``; so on the integrity operations (decrypt, unwrap) ``GeneralError`` means
"does not verify", elsewhere it means "the device is in trouble".
"""

from __future__ import annotations

import enum
from types import TracebackType

import pkcs11.exceptions as p11e

from hsm.errors import (
    HSMError,
    HSMUnavailable,
    InvalidCiphertext,
    InvalidInput,
    MechanismUnsupported,
    OperationFailed,
    PinIncorrect,
    Reason,
)

__all__ = ["Recovery", "recovery_for", "translate_error", "translated"]


class Recovery(enum.Enum):
    """What the pool does after a transient error, from the cheapest to the dearest."""

    NONE = "none"  # the member is busy or flaky; nothing to rebuild
    KEYS = "keys"  # key handles went stale: forget the session's key objects
    SESSION = "session"  # the session is gone: drop it, open another
    MODULE = "module"  # the module or token is gone: finalize + initialize + login


_ROWS: tuple[tuple[type[Exception], type[HSMError], Reason, Recovery], ...] = (
    (p11e.PinIncorrect, PinIncorrect, Reason.PIN_INCORRECT, Recovery.NONE),
    (p11e.PinInvalid, PinIncorrect, Reason.PIN_INVALID, Recovery.NONE),
    (p11e.PinLenRange, PinIncorrect, Reason.PIN_LENGTH, Recovery.NONE),
    (p11e.PinExpired, PinIncorrect, Reason.PIN_EXPIRED, Recovery.NONE),
    (p11e.PinLocked, PinIncorrect, Reason.PIN_LOCKED, Recovery.NONE),
    (p11e.UserPinNotInitialized, PinIncorrect, Reason.PIN_NOT_INITIALIZED, Recovery.NONE),
    (p11e.DeviceRemoved, HSMUnavailable, Reason.DEVICE_REMOVED, Recovery.MODULE),
    (p11e.TokenNotPresent, HSMUnavailable, Reason.TOKEN_NOT_PRESENT, Recovery.MODULE),
    (p11e.TokenNotRecognised, HSMUnavailable, Reason.TOKEN_NOT_RECOGNISED, Recovery.MODULE),
    (p11e.DeviceError, HSMUnavailable, Reason.DEVICE_ERROR, Recovery.SESSION),
    (p11e.DeviceMemory, HSMUnavailable, Reason.DEVICE_MEMORY, Recovery.NONE),
    (p11e.HostMemory, HSMUnavailable, Reason.HOST_MEMORY, Recovery.NONE),
    (p11e.SessionHandleInvalid, HSMUnavailable, Reason.SESSION_HANDLE_INVALID, Recovery.SESSION),
    (p11e.SessionClosed, HSMUnavailable, Reason.SESSION_CLOSED, Recovery.SESSION),
    (p11e.SessionCount, HSMUnavailable, Reason.SESSION_COUNT, Recovery.NONE),
    (p11e.UserNotLoggedIn, HSMUnavailable, Reason.NOT_LOGGED_IN, Recovery.MODULE),
    (p11e.FunctionFailed, HSMUnavailable, Reason.FUNCTION_FAILED, Recovery.NONE),
    (p11e.OperationActive, HSMUnavailable, Reason.OPERATION_ACTIVE, Recovery.SESSION),
    (p11e.FunctionCancelled, HSMUnavailable, Reason.FUNCTION_CANCELLED, Recovery.NONE),
    (p11e.KeyHandleInvalid, HSMUnavailable, Reason.KEY_HANDLE_INVALID, Recovery.KEYS),
    (p11e.ObjectHandleInvalid, HSMUnavailable, Reason.OBJECT_HANDLE_INVALID, Recovery.KEYS),
    (p11e.WrappingKeyHandleInvalid, HSMUnavailable, Reason.KEY_HANDLE_INVALID, Recovery.KEYS),
    (p11e.UnwrappingKeyHandleInvalid, HSMUnavailable, Reason.KEY_HANDLE_INVALID, Recovery.KEYS),
    (p11e.EncryptedDataInvalid, InvalidCiphertext, Reason.ENCRYPTED_DATA_INVALID, Recovery.NONE),
    (p11e.EncryptedDataLenRange, InvalidCiphertext, Reason.ENCRYPTED_DATA_LENGTH, Recovery.NONE),
    (p11e.WrappedKeyInvalid, InvalidCiphertext, Reason.WRAPPED_KEY_INVALID, Recovery.NONE),
    (p11e.WrappedKeyLenRange, InvalidCiphertext, Reason.WRAPPED_KEY_LENGTH, Recovery.NONE),
    (p11e.MechanismInvalid, MechanismUnsupported, Reason.MECHANISM_INVALID, Recovery.NONE),
    (p11e.MechanismParamInvalid, MechanismUnsupported, Reason.MECHANISM_PARAM_INVALID,
     Recovery.NONE),
    (p11e.FunctionNotSupported, MechanismUnsupported, Reason.FUNCTION_NOT_SUPPORTED, Recovery.NONE),
    (p11e.KeyUnextractable, OperationFailed, Reason.KEY_UNEXTRACTABLE, Recovery.NONE),
    (p11e.KeyNotWrappable, OperationFailed, Reason.KEY_NOT_WRAPPABLE, Recovery.NONE),
    (p11e.ArgumentsBad, InvalidInput, Reason.ARGUMENTS_BAD, Recovery.NONE),
    (p11e.DataLenRange, InvalidInput, Reason.DATA_LENGTH, Recovery.NONE),
    (p11e.DataInvalid, InvalidInput, Reason.DATA_INVALID, Recovery.NONE),
    # Attribute and template refusals: the edge turns the first two into "absent" results
    # (hsm.pkcs11.objects); the template ones are what a module enforcing an unwrap
    # template answers (the cluster wrapping key's self-test expects them).
    (p11e.AttributeTypeInvalid, OperationFailed, Reason.ATTRIBUTE_TYPE_INVALID, Recovery.NONE),
    (p11e.AttributeSensitive, OperationFailed, Reason.ATTRIBUTE_SENSITIVE, Recovery.NONE),
    (p11e.AttributeValueInvalid, OperationFailed, Reason.ATTRIBUTE_VALUE_INVALID,
     Recovery.NONE),
    (p11e.TemplateInconsistent, OperationFailed, Reason.TEMPLATE_INCONSISTENT, Recovery.NONE),
    (p11e.TemplateIncomplete, OperationFailed, Reason.TEMPLATE_INCOMPLETE, Recovery.NONE),
    # Login is per token per application (FACTS): what a second login in this process gets.
    (p11e.UserAlreadyLoggedIn, OperationFailed, Reason.USER_ALREADY_LOGGED_IN, Recovery.NONE),
    (p11e.AnotherUserAlreadyLoggedIn, OperationFailed, Reason.ANOTHER_USER_LOGGED_IN,
     Recovery.NONE),
    (p11e.UserTooManyTypes, OperationFailed, Reason.USER_TOO_MANY_TYPES, Recovery.NONE),
    (p11e.SessionReadOnlyExists, OperationFailed, Reason.SESSION_READ_ONLY_EXISTS,
     Recovery.NONE),
)

_RECOVERY_BY_REASON = {reason: recovery for _, _, reason, recovery in _ROWS}
_RECOVERY_BY_REASON[Reason.NOT_INITIALIZED] = Recovery.MODULE
_RECOVERY_BY_REASON[Reason.GENERAL_ERROR] = Recovery.MODULE
_RECOVERY_BY_REASON[Reason.MODULE_INIT_FAILED] = Recovery.MODULE


def recovery_for(error: HSMError) -> Recovery:
    """What the pool must rebuild after ``error`` (``NONE`` for non-transient errors)."""
    if not error.transient:
        return Recovery.NONE
    return _RECOVERY_BY_REASON.get(error.reason, Recovery.NONE)


def translate_error(exc: p11e.PKCS11Error, operation: str, *, integrity: bool = False,
                    ) -> HSMError:
    """The package's error for ``exc`` (for hot paths that use a bare ``try``; everything
    else uses :class:`translated`). Raise it ``from exc``."""
    for source, target, reason, _ in _ROWS:
        if isinstance(exc, source):
            if target is InvalidCiphertext:
                return InvalidCiphertext("ciphertext does not verify", reason=reason)
            return target(f"{operation}: the HSM answered {type(exc).__name__}", reason=reason)
    if isinstance(exc, p11e.GeneralError):
        if integrity:
            return InvalidCiphertext("ciphertext does not verify", reason=Reason.GENERAL_ERROR)
        return HSMUnavailable(f"{operation}: the HSM answered GeneralError",
                              reason=Reason.GENERAL_ERROR)
    # CKR_CRYPTOKI_(NOT|ALREADY)_INITIALIZED arrive as plain PKCS11Errors: their message is
    # all that tells them apart (the only place that reads one).
    text = str(exc).lower()
    if "not initialized" in text:
        return HSMUnavailable(
            f"{operation}: the PKCS#11 module is not initialized", reason=Reason.NOT_INITIALIZED
        )
    if "already initialized" in text:
        return OperationFailed(f"{operation}: the PKCS#11 module is already initialized",
                               reason=Reason.ALREADY_INITIALIZED)
    return OperationFailed(
        f"{operation}: the HSM answered {type(exc).__name__}",
        reason=Reason.PKCS11_ERROR,
    )


class translated:  # used like a function: ``with translated("unwrap"):``
    """Run a block of python-pkcs11 calls; re-raise its errors as this package's.

    ``operation`` names the call in the message ("unwrap", "login"...). ``integrity=True``
    for decrypt/unwrap, where SoftHSM's ``GeneralError`` means a verification failure.
    A class rather than a generator: it sits on every call's hot path.
    """

    __slots__ = ("integrity", "operation")

    def __init__(self, operation: str, *, integrity: bool = False) -> None:
        self.operation = operation
        self.integrity = integrity

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if isinstance(exc, p11e.PKCS11Error):
            raise translate_error(exc, self.operation, integrity=self.integrity) from exc
