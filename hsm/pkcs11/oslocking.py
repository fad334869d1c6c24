"""Switch a loaded PKCS#11 module to OS locking, through ctypes on the same shared object.

python-pkcs11 always calls ``C_Initialize(NULL)``, which tells the module the application is
single-threaded; SoftHSM then turns every mutex into a no-op and two threads crash it. Right
after each (re)initialize, before any session is opened, we call the module's own
``C_Finalize(NULL)`` and ``C_Initialize`` with ``CKF_OS_LOCKING_OK``. ``dlopen`` of the same
path returns the same handle, so ``C_GetFunctionList`` gives the same function list
python-pkcs11 uses.
"""

from __future__ import annotations

import ctypes
from typing import Any

__all__ = ["CKF_OS_LOCKING_OK", "OSLockingError", "enable_os_locking", "finalize_module"]

CKF_OS_LOCKING_OK = 0x2
_CKR_OK = 0
_CKR_CRYPTOKI_NOT_INITIALIZED = 0x190


class OSLockingError(Exception):
    """``C_Initialize`` with OS locking failed.

    ``initialized`` tells whether the plain ``C_Initialize(NULL)`` that followed worked (the
    module then runs, but every call to it must be serialized) or not (the module is down).
    """

    def __init__(self, rv: int, *, initialized: bool = True) -> None:
        super().__init__(f"C_Initialize(CKF_OS_LOCKING_OK) returned 0x{rv:X}")
        self.rv = rv
        self.initialized = initialized


class _InitArgs(ctypes.Structure):
    _fields_ = (
        ("CreateMutex", ctypes.c_void_p),
        ("DestroyMutex", ctypes.c_void_p),
        ("LockMutex", ctypes.c_void_p),
        ("UnlockMutex", ctypes.c_void_p),
        ("flags", ctypes.c_ulong),
        ("pReserved", ctypes.c_void_p),
    )


_Fn = ctypes.CFUNCTYPE(ctypes.c_ulong, ctypes.c_void_p)


def _functions(path: str) -> tuple[Any, Any]:
    so = ctypes.CDLL(path)
    flist = ctypes.c_void_p()
    rv = so.C_GetFunctionList(ctypes.byref(flist))
    if rv != _CKR_OK or not flist.value:
        raise OSLockingError(int(rv), initialized=False)
    # CK_FUNCTION_LIST: CK_VERSION (2 bytes, padded to pointer alignment), then
    # C_Initialize, C_Finalize, ... as function pointers.
    table = ctypes.cast(flist, ctypes.POINTER(ctypes.c_void_p))
    return _Fn(table[1]), _Fn(table[2])


def enable_os_locking(path: str) -> None:
    """Re-initialize the module at ``path`` with OS locking. Call with no session open.

    On refusal the module is initialized again the plain way and :class:`OSLockingError`
    is raised, so the caller can fall back to serializing every call.
    """
    c_initialize, c_finalize = _functions(path)
    c_finalize(None)
    args = _InitArgs(None, None, None, None, CKF_OS_LOCKING_OK, None)
    rv = int(c_initialize(ctypes.byref(args)))
    if rv != _CKR_OK:
        plain = int(c_initialize(None))
        raise OSLockingError(rv, initialized=plain == _CKR_OK)


def finalize_module(path: str) -> int:
    """Call the module's own ``C_Finalize(NULL)``; returns its CKR code. For fault injection
    only (see :meth:`hsm.pkcs11.Module.quiesced`, :func:`hsm.testing.faults.finalize_under`)."""
    _, c_finalize = _functions(path)
    return int(c_finalize(None))
