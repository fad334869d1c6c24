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
)

__all__ = ["Recovery", "recovery_for", "translate_error", "translated"]


class Recovery(enum.Enum):
    """What the pool does after a transient error, from the cheapest to the dearest."""

    NONE = "none"  # the member is busy or flaky; nothing to rebuild
    KEYS = "keys"  # key handles went stale: forget the session's key objects
    SESSION = "session"  # the session is gone: drop it, open another
    MODULE = "module"  # the module or token is gone: finalize + initialize + login


_ROWS: tuple[tuple[type[Exception], type[HSMError], str, Recovery], ...] = (
    (p11e.PinIncorrect, PinIncorrect, "pin_incorrect", Recovery.NONE),
    (p11e.PinInvalid, PinIncorrect, "pin_invalid", Recovery.NONE),
    (p11e.PinLenRange, PinIncorrect, "pin_length", Recovery.NONE),
    (p11e.PinExpired, PinIncorrect, "pin_expired", Recovery.NONE),
    (p11e.PinLocked, PinIncorrect, "pin_locked", Recovery.NONE),
    (p11e.UserPinNotInitialized, PinIncorrect, "pin_not_initialized", Recovery.NONE),
    (p11e.DeviceRemoved, HSMUnavailable, "device_removed", Recovery.MODULE),
    (p11e.TokenNotPresent, HSMUnavailable, "token_not_present", Recovery.MODULE),
    (p11e.TokenNotRecognised, HSMUnavailable, "token_not_recognised", Recovery.MODULE),
    (p11e.DeviceError, HSMUnavailable, "device_error", Recovery.SESSION),
    (p11e.DeviceMemory, HSMUnavailable, "device_memory", Recovery.NONE),
    (p11e.HostMemory, HSMUnavailable, "host_memory", Recovery.NONE),
    (p11e.SessionHandleInvalid, HSMUnavailable, "session_handle_invalid", Recovery.SESSION),
    (p11e.SessionClosed, HSMUnavailable, "session_closed", Recovery.SESSION),
    (p11e.SessionCount, HSMUnavailable, "session_count", Recovery.NONE),
    (p11e.UserNotLoggedIn, HSMUnavailable, "not_logged_in", Recovery.MODULE),
    (p11e.FunctionFailed, HSMUnavailable, "function_failed", Recovery.NONE),
    (p11e.OperationActive, HSMUnavailable, "operation_active", Recovery.SESSION),
    (p11e.FunctionCancelled, HSMUnavailable, "function_cancelled", Recovery.NONE),
    (p11e.KeyHandleInvalid, HSMUnavailable, "key_handle_invalid", Recovery.KEYS),
    (p11e.ObjectHandleInvalid, HSMUnavailable, "object_handle_invalid", Recovery.KEYS),
    (p11e.WrappingKeyHandleInvalid, HSMUnavailable, "key_handle_invalid", Recovery.KEYS),
    (p11e.UnwrappingKeyHandleInvalid, HSMUnavailable, "key_handle_invalid", Recovery.KEYS),
    (p11e.EncryptedDataInvalid, InvalidCiphertext, "encrypted_data_invalid", Recovery.NONE),
    (p11e.EncryptedDataLenRange, InvalidCiphertext, "encrypted_data_length", Recovery.NONE),
    (p11e.WrappedKeyInvalid, InvalidCiphertext, "wrapped_key_invalid", Recovery.NONE),
    (p11e.WrappedKeyLenRange, InvalidCiphertext, "wrapped_key_length", Recovery.NONE),
    (p11e.MechanismInvalid, MechanismUnsupported, "mechanism_invalid", Recovery.NONE),
    (p11e.MechanismParamInvalid, MechanismUnsupported, "mechanism_param_invalid", Recovery.NONE),
    (p11e.FunctionNotSupported, MechanismUnsupported, "function_not_supported", Recovery.NONE),
    (p11e.KeyUnextractable, OperationFailed, "key_unextractable", Recovery.NONE),
    (p11e.KeyNotWrappable, OperationFailed, "key_not_wrappable", Recovery.NONE),
    (p11e.ArgumentsBad, InvalidInput, "arguments_bad", Recovery.NONE),
    (p11e.DataLenRange, InvalidInput, "data_length", Recovery.NONE),
    (p11e.DataInvalid, InvalidInput, "data_invalid", Recovery.NONE),
)

_RECOVERY_BY_REASON = {reason: recovery for _, _, reason, recovery in _ROWS}
_RECOVERY_BY_REASON["not_initialized"] = Recovery.MODULE
_RECOVERY_BY_REASON["general_error"] = Recovery.MODULE


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
            return InvalidCiphertext("ciphertext does not verify", reason="general_error")
        return HSMUnavailable(f"{operation}: the HSM answered GeneralError", reason="general_error")
    text = str(exc)
    if "not initialized" in text.lower():
        return HSMUnavailable(
            f"{operation}: the PKCS#11 module is not initialized", reason="not_initialized"
        )
    return OperationFailed(
        f"{operation}: the HSM answered {type(exc).__name__}",
        reason=type(exc).__name__.lower() or "pkcs11_error",
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
