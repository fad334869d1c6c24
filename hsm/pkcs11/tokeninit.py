"""Initialize a token through PKCS#11 itself: ``C_InitToken`` with the SO PIN in the first
slot whose token is not initialized, then, logged in as the security officer, ``C_InitPIN``
for the user PIN. Through ctypes on the module's own function list (python-pkcs11 0.10 has
``Session.init_pin`` but no ``C_InitToken``), as :mod:`hsm.pkcs11.oslocking` does.

For the SoftHSM test harness (:mod:`hsm.testing.softhsm`), which runs it as a program of its
own so that no PIN is ever on a command line (``softhsm2-util --pin`` showed both PINs in
``/proc/*/cmdline``) and the harness process loads no module::

    python -m hsm.pkcs11.tokeninit < request.json

The request, on stdin: ``{"pin": ..., "so_pin": ..., "tokens": [{"module": PATH, "label":
LABEL, "env": {"SOFTHSM2_CONF": PATH}}, ...]}``; each module is initialized with its
``env`` set (SoftHSM reads ``SOFTHSM2_CONF`` in ``C_Initialize``), a token initialized, the
module finalized. The answer, on stdout: ``{"serials": [...]}``, in the same order. A failure
is one line on stderr and exit status 1. PINs are never printed.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
from collections.abc import Mapping
from typing import Any

__all__ = ["TokenInitError", "init_token", "main"]

_CKR_OK = 0
_CKF_TOKEN_INITIALIZED = 0x400
_CKF_RW_SESSION = 0x2
_CKF_SERIAL_SESSION = 0x4
_CKU_SO = 0
_LABEL_LEN = 32

# Indices in CK_FUNCTION_LIST (2.x): the version (padded to a pointer), then the functions.
_C_INITIALIZE, _C_FINALIZE = 1, 2
_C_GET_SLOT_LIST, _C_GET_TOKEN_INFO = 5, 7
_C_INIT_TOKEN, _C_INIT_PIN = 10, 11
_C_OPEN_SESSION, _C_CLOSE_SESSION = 13, 14
_C_LOGIN, _C_LOGOUT = 19, 20

_CKR_NAMES = {
    0x03: "SLOT_ID_INVALID", 0x05: "GENERAL_ERROR", 0x06: "FUNCTION_FAILED",
    0x07: "ARGUMENTS_BAD", 0x30: "DEVICE_ERROR", 0x32: "DEVICE_REMOVED",
    0xA0: "PIN_INCORRECT", 0xA1: "PIN_INVALID", 0xA2: "PIN_LEN_RANGE", 0xB6: "SESSION_EXISTS",
    0xE0: "TOKEN_NOT_PRESENT", 0x100: "USER_ALREADY_LOGGED_IN", 0x191: "ALREADY_INITIALIZED",
}

_ulong = ctypes.c_ulong


class _Version(ctypes.Structure):
    _fields_ = (("major", ctypes.c_ubyte), ("minor", ctypes.c_ubyte))


class _TokenInfo(ctypes.Structure):
    _fields_ = (
        ("label", ctypes.c_char * 32), ("manufacturer", ctypes.c_char * 32),
        ("model", ctypes.c_char * 16), ("serial", ctypes.c_char * 16), ("flags", _ulong),
        ("max_sessions", _ulong), ("sessions", _ulong), ("max_rw_sessions", _ulong),
        ("rw_sessions", _ulong), ("max_pin_len", _ulong), ("min_pin_len", _ulong),
        ("public_memory", _ulong), ("free_public_memory", _ulong),
        ("private_memory", _ulong), ("free_private_memory", _ulong),
        ("hardware", _Version), ("firmware", _Version), ("utc_time", ctypes.c_char * 16),
    )


class TokenInitError(Exception):
    """A PKCS#11 call of the initialization failed (``function``, ``rv``), or the module
    can't be used at all (``rv`` None). The message never holds a PIN."""

    def __init__(self, message: str, *, function: str | None = None,
                 rv: int | None = None) -> None:
        super().__init__(message)
        self.function = function
        self.rv = rv


def _function(table: Any, index: int, *args: Any) -> Any:
    return ctypes.CFUNCTYPE(_ulong, *args)(table[index])


class _Module:
    """The few functions of one module's list that initialization needs."""

    def __init__(self, path: str) -> None:
        try:
            so = ctypes.CDLL(path)
            get_list = so.C_GetFunctionList
        except (OSError, AttributeError) as exc:
            raise TokenInitError(f"{path} is not a loadable PKCS#11 module: {exc}") from None
        flist = ctypes.c_void_p()
        rv = int(get_list(ctypes.byref(flist)))
        if rv != _CKR_OK or not flist.value:
            raise TokenInitError(f"{path}: C_GetFunctionList returned {_name(rv)}",
                                 function="C_GetFunctionList", rv=rv)
        table = ctypes.cast(flist, ctypes.POINTER(ctypes.c_void_p))
        vp, ptr = ctypes.c_void_p, ctypes.POINTER
        self.path = path
        self.initialize = _function(table, _C_INITIALIZE, vp)
        self.finalize = _function(table, _C_FINALIZE, vp)
        self.get_slot_list = _function(table, _C_GET_SLOT_LIST, ctypes.c_ubyte, ptr(_ulong),
                                       ptr(_ulong))
        self.get_token_info = _function(table, _C_GET_TOKEN_INFO, _ulong, ptr(_TokenInfo))
        self.init_token = _function(table, _C_INIT_TOKEN, _ulong, ctypes.c_char_p, _ulong,
                                    ctypes.c_char_p)
        self.init_pin = _function(table, _C_INIT_PIN, _ulong, ctypes.c_char_p, _ulong)
        self.open_session = _function(table, _C_OPEN_SESSION, _ulong, _ulong, vp, vp,
                                      ptr(_ulong))
        self.close_session = _function(table, _C_CLOSE_SESSION, _ulong)
        self.login = _function(table, _C_LOGIN, _ulong, _ulong, ctypes.c_char_p, _ulong)
        self.logout = _function(table, _C_LOGOUT, _ulong)

    def check(self, function: str, rv: int) -> None:
        if rv != _CKR_OK:
            raise TokenInitError(f"{function} returned {_name(rv)}", function=function, rv=rv)

    def token_info(self, slot: int) -> _TokenInfo:
        info = _TokenInfo()
        self.check("C_GetTokenInfo", int(self.get_token_info(slot, ctypes.byref(info))))
        return info

    def free_slot(self) -> int:
        """The first slot whose token is not initialized."""
        count = _ulong(0)
        self.check("C_GetSlotList", int(self.get_slot_list(1, None, ctypes.byref(count))))
        slots = (_ulong * max(count.value, 1))()
        self.check("C_GetSlotList", int(self.get_slot_list(1, slots, ctypes.byref(count))))
        for slot in slots[:count.value]:
            if not self.token_info(slot).flags & _CKF_TOKEN_INITIALIZED:
                return int(slot)
        raise TokenInitError(f"{self.path} has no slot with an uninitialized token")


def _name(rv: int) -> str:
    name = _CKR_NAMES.get(rv)
    return f"CKR_{name} (0x{rv:X})" if name else f"0x{rv:X}"


def _label(label: str) -> bytes:
    raw = label.encode("utf-8")
    if not raw or len(raw) > _LABEL_LEN:
        raise TokenInitError(f"token label {label!r} must be 1 to {_LABEL_LEN} bytes")
    return raw.ljust(_LABEL_LEN, b" ")


def init_token(module: str, label: str, *, so_pin: str, pin: str) -> str:
    """Initialize a token labelled ``label`` in the first free slot of ``module`` with these
    PINs; return its serial. Initializes and finalizes the module (call it with no one
    else using the module in this process, with its environment already set)."""
    lib = _Module(module)
    padded = _label(label)
    so_raw, user_raw = so_pin.encode("utf-8"), pin.encode("utf-8")
    lib.check("C_Initialize", int(lib.initialize(None)))
    try:
        slot = lib.free_slot()
        lib.check("C_InitToken", int(lib.init_token(slot, so_raw, len(so_raw), padded)))
        session = _ulong(0)
        lib.check("C_OpenSession", int(lib.open_session(
            slot, _CKF_SERIAL_SESSION | _CKF_RW_SESSION, None, None, ctypes.byref(session))))
        try:
            lib.check("C_Login", int(lib.login(session, _CKU_SO, so_raw, len(so_raw))))
            try:
                lib.check("C_InitPIN", int(lib.init_pin(session, user_raw, len(user_raw))))
            finally:
                lib.logout(session)
        finally:
            lib.close_session(session)
        info = lib.token_info(slot)
        serial: str = info.serial.decode("ascii", "replace").strip()
        if info.label.rstrip(b" ") != padded.rstrip(b" ") or not serial:
            raise TokenInitError(f"the token initialized in slot {slot} does not read back "
                                 f"as {label!r}")
        return serial
    finally:
        lib.finalize(None)


def _request(raw: str) -> tuple[str, str, list[tuple[str, str, dict[str, str]]]]:
    data = json.loads(raw)
    pin, so_pin, tokens = data["pin"], data["so_pin"], data["tokens"]
    if not (isinstance(pin, str) and isinstance(so_pin, str) and isinstance(tokens, list)):
        raise ValueError("pin, so_pin and tokens are required")
    out = []
    for token in tokens:
        env = token.get("env", {})
        if not (isinstance(token["module"], str) and isinstance(token["label"], str)
                and isinstance(env, Mapping)):
            raise ValueError("each token needs a module, a label and an env")
        out.append((token["module"], token["label"], {str(k): str(v) for k, v in env.items()}))
    return pin, so_pin, out


def main() -> int:
    """The program: a request on stdin, the serials on stdout (see the module docstring)."""
    try:
        pin, so_pin, tokens = _request(sys.stdin.read())
    except (ValueError, KeyError, TypeError, AttributeError):
        print("tokeninit: the request on stdin is not valid", file=sys.stderr)
        return 2
    serials = []
    for module, label, env in tokens:
        os.environ.update(env)
        try:
            serials.append(init_token(module, label, so_pin=so_pin, pin=pin))
        except TokenInitError as exc:
            print(f"token {label!r}: {exc}", file=sys.stderr)
            return 1
    print(json.dumps({"serials": serials}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
