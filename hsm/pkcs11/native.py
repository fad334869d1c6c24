"""The few PKCS#11 calls this package makes through the module's own function list (ctypes),
where python-pkcs11 does not make them the way we need:

- ``C_Login`` / ``C_Logout`` on a session python-pkcs11 opened. ``Token.open(user_pin=...)``
  opens a session, then logs in; when the login fails it raises and the session it opened is
  lost (no handle to close it) until the module is finalized. Here the session is opened
  first (python-pkcs11, no PIN), the login is one call on its handle, and a refused login
  closes that session at once.
- ``C_GetTokenInfo``'s session limits (``ulMaxSessionCount``, ``ulMaxRwSessionCount``):
  python-pkcs11's ``Token`` keeps only the label, serial, model and flags.

``dlopen`` of the same path returns the same handle, so ``C_GetFunctionList`` gives the very
function list python-pkcs11 calls (as for :mod:`hsm.pkcs11.oslocking`). A return code other
than ``CKR_OK`` becomes the python-pkcs11 exception python-pkcs11 itself would raise, so that
it goes through the one translation table (:mod:`hsm.pkcs11.translate`) like every other
error.
"""

from __future__ import annotations

import ctypes
import sys
from dataclasses import dataclass
from typing import Any

import pkcs11.exceptions as p11e

__all__ = [
    "CKU_SO",
    "CKU_USER",
    "SessionLimits",
    "error_for",
    "function_table",
    "login",
    "logout",
    "session_limits",
]

CKU_SO = 0
CKU_USER = 1

# Positions in CK_FUNCTION_LIST (after CK_VERSION, padded to pointer alignment).
_C_GET_TOKEN_INFO = 7
_C_LOGIN = 19
_C_LOGOUT = 20

# CK_EFFECTIVELY_INFINITE and CK_UNAVAILABLE_INFORMATION: "no limit" / "not told".
_NO_LIMIT = (0, ctypes.c_ulong(-1).value)

# What python-pkcs11 raises for the codes these calls return (its map_rv_to_error is C-only).
_ERRORS: dict[int, type[p11e.PKCS11Error]] = {
    0x02: p11e.HostMemory,
    0x05: p11e.GeneralError,
    0x06: p11e.FunctionFailed,
    0x07: p11e.ArgumentsBad,
    0x30: p11e.DeviceError,
    0x31: p11e.DeviceMemory,
    0x32: p11e.DeviceRemoved,
    0x50: p11e.FunctionCancelled,
    0x54: p11e.FunctionNotSupported,
    0xA0: p11e.PinIncorrect,
    0xA1: p11e.PinInvalid,
    0xA2: p11e.PinLenRange,
    0xA3: p11e.PinExpired,
    0xA4: p11e.PinLocked,
    0xB0: p11e.SessionClosed,
    0xB1: p11e.SessionCount,
    0xB3: p11e.SessionHandleInvalid,
    0xB7: p11e.SessionReadOnlyExists,
    0xE0: p11e.TokenNotPresent,
    0xE1: p11e.TokenNotRecognised,
    0x100: p11e.UserAlreadyLoggedIn,
    0x101: p11e.UserNotLoggedIn,
    0x102: p11e.UserPinNotInitialized,
    0x104: p11e.AnotherUserAlreadyLoggedIn,
    0x105: p11e.UserTooManyTypes,
}


def error_for(rv: int) -> p11e.PKCS11Error:
    """The python-pkcs11 exception for return code ``rv`` (not ``CKR_OK``)."""
    if rv == 0x190:
        return p11e.PKCS11Error("Initialisation error (not initialized)")
    if rv == 0x191:
        return p11e.PKCS11Error("Initialisation error (already initialized)")
    kind = _ERRORS.get(rv)
    if kind is None:
        return p11e.PKCS11Error(f"CKR 0x{rv:X}")
    return kind()


class _Version(ctypes.Structure):
    _fields_ = (("major", ctypes.c_ubyte), ("minor", ctypes.c_ubyte))


class _TokenInfo(ctypes.Structure):
    """``CK_TOKEN_INFO`` (CK_ULONG = unsigned long; packed to 1 byte on Windows only)."""

    if sys.platform == "win32":
        _pack_ = 1
    _fields_ = (
        ("label", ctypes.c_ubyte * 32),
        ("manufacturer_id", ctypes.c_ubyte * 32),
        ("model", ctypes.c_ubyte * 16),
        ("serial_number", ctypes.c_ubyte * 16),
        ("flags", ctypes.c_ulong),
        ("max_session_count", ctypes.c_ulong),
        ("session_count", ctypes.c_ulong),
        ("max_rw_session_count", ctypes.c_ulong),
        ("rw_session_count", ctypes.c_ulong),
        ("max_pin_len", ctypes.c_ulong),
        ("min_pin_len", ctypes.c_ulong),
        ("total_public_memory", ctypes.c_ulong),
        ("free_public_memory", ctypes.c_ulong),
        ("total_private_memory", ctypes.c_ulong),
        ("free_private_memory", ctypes.c_ulong),
        ("hardware_version", _Version),
        ("firmware_version", _Version),
        ("utc_time", ctypes.c_char * 16),
    )


_GetTokenInfo = ctypes.CFUNCTYPE(ctypes.c_ulong, ctypes.c_ulong, ctypes.POINTER(_TokenInfo))
_Login = ctypes.CFUNCTYPE(ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_void_p,
                          ctypes.c_ulong)
_Logout = ctypes.CFUNCTYPE(ctypes.c_ulong, ctypes.c_ulong)


def function_table(path: str) -> Any:
    """The ``CK_FUNCTION_LIST`` of the module at ``path`` as an array of pointers (index 0 is
    the version). :class:`OSError` if the file can't be loaded, :class:`AttributeError` if
    it has no ``C_GetFunctionList``; a failing ``C_GetFunctionList`` raises its error."""
    so = ctypes.CDLL(path)
    flist = ctypes.c_void_p()
    rv = int(so.C_GetFunctionList(ctypes.byref(flist)))
    if rv != 0 or not flist.value:
        raise error_for(rv or 0x05)
    return ctypes.cast(flist, ctypes.POINTER(ctypes.c_void_p))


def login(path: str, session_handle: int, user_type: int, pin: str) -> None:
    """``C_Login`` on an open session of the module at ``path``; raises python-pkcs11's
    exception for a refusal. The PIN's bytes are overwritten after the call (best effort:
    ``pin`` itself is an immutable ``str``)."""
    data = pin.encode("utf-8")
    buffer = ctypes.create_string_buffer(data, len(data))
    del data
    try:
        c_login = _Login(function_table(path)[_C_LOGIN])
        rv = int(c_login(session_handle, user_type, ctypes.addressof(buffer), len(buffer)))
    finally:
        ctypes.memset(buffer, 0, len(buffer))
    if rv != 0:
        raise error_for(rv)


def logout(path: str, session_handle: int) -> None:
    """``C_Logout`` on an open session of the module at ``path`` (logs the token out for the
    whole process); raises python-pkcs11's exception for a refusal."""
    rv = int(_Logout(function_table(path)[_C_LOGOUT])(session_handle))
    if rv != 0:
        raise error_for(rv)


@dataclass(frozen=True)
class SessionLimits:
    """How many sessions the module lets one application open on the token; None where it
    sets no limit (``CK_EFFECTIVELY_INFINITE``) or does not say."""

    max_sessions: int | None
    max_rw_sessions: int | None


def session_limits(path: str, slot_id: int) -> SessionLimits:
    """``ulMaxSessionCount`` and ``ulMaxRwSessionCount`` of the token in ``slot_id``."""
    info = _TokenInfo()
    rv = int(_GetTokenInfo(function_table(path)[_C_GET_TOKEN_INFO])(slot_id,
                                                                     ctypes.byref(info)))
    if rv != 0:
        raise error_for(rv)

    def limit(value: int) -> int | None:
        return None if value in _NO_LIMIT else int(value)

    return SessionLimits(limit(info.max_session_count), limit(info.max_rw_session_count))
