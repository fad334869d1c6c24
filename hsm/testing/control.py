"""A member's control file, the way the fault-injection shim reads it: the :class:`Fault`
value, CKR codes by name, PKCS#11 function names, and atomic writes.

The file format (``key=value`` lines, numbers only) is described in ``docs/FAULTS.md``;
:class:`hsm.testing.faults.FaultInjector` writes these files, ``shim/p11shim.c`` reads them.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from hsm.testing.layout import HarnessError

__all__ = [
    "CKR_CODES",
    "LIBRARY_CALLS",
    "PKCS11_FUNCTIONS",
    "Fault",
    "ckr_code",
    "ckr_name",
    "non_negative_ms",
    "parse_calls",
    "write_atomic",
]

#: CKR codes by name (``CKR_`` prefix dropped). Any other code can be given as ``0xNN``.
CKR_CODES: Mapping[str, int] = MappingProxyType({
    "HOST_MEMORY": 0x02,
    "GENERAL_ERROR": 0x05,
    "FUNCTION_FAILED": 0x06,
    "DEVICE_ERROR": 0x30,
    "DEVICE_MEMORY": 0x31,
    "DEVICE_REMOVED": 0x32,
    "FUNCTION_CANCELED": 0x50,
    "OPERATION_ACTIVE": 0x90,
    "PIN_INCORRECT": 0xA0,
    "PIN_LOCKED": 0xA4,
    "SESSION_CLOSED": 0xB0,
    "SESSION_COUNT": 0xB1,
    "SESSION_HANDLE_INVALID": 0xB3,
    "TOKEN_NOT_PRESENT": 0xE0,
    "TOKEN_NOT_RECOGNIZED": 0xE1,
    "USER_NOT_LOGGED_IN": 0x101,
    "CRYPTOKI_NOT_INITIALIZED": 0x190,
})
_NAMES_BY_CODE = {code: name for name, code in CKR_CODES.items()}

#: Every function of a PKCS#11 2.40 function list, which the shim forwards.
PKCS11_FUNCTIONS: tuple[str, ...] = (
    "C_Initialize", "C_Finalize", "C_GetInfo", "C_GetFunctionList", "C_GetSlotList",
    "C_GetSlotInfo", "C_GetTokenInfo", "C_GetMechanismList", "C_GetMechanismInfo",
    "C_InitToken", "C_InitPIN", "C_SetPIN", "C_OpenSession", "C_CloseSession",
    "C_CloseAllSessions", "C_GetSessionInfo", "C_GetOperationState", "C_SetOperationState",
    "C_Login", "C_Logout", "C_CreateObject", "C_CopyObject", "C_DestroyObject",
    "C_GetObjectSize", "C_GetAttributeValue", "C_SetAttributeValue", "C_FindObjectsInit",
    "C_FindObjects", "C_FindObjectsFinal", "C_EncryptInit", "C_Encrypt", "C_EncryptUpdate",
    "C_EncryptFinal", "C_DecryptInit", "C_Decrypt", "C_DecryptUpdate", "C_DecryptFinal",
    "C_DigestInit", "C_Digest", "C_DigestUpdate", "C_DigestKey", "C_DigestFinal",
    "C_SignInit", "C_Sign", "C_SignUpdate", "C_SignFinal", "C_SignRecoverInit",
    "C_SignRecover", "C_VerifyInit", "C_Verify", "C_VerifyUpdate", "C_VerifyFinal",
    "C_VerifyRecoverInit", "C_VerifyRecover", "C_DigestEncryptUpdate",
    "C_DecryptDigestUpdate", "C_SignEncryptUpdate", "C_DecryptVerifyUpdate",
    "C_GenerateKey", "C_GenerateKeyPair", "C_WrapKey", "C_UnwrapKey", "C_DeriveKey",
    "C_SeedRandom", "C_GenerateRandom", "C_GetFunctionStatus", "C_CancelFunction",
    "C_WaitForSlotEvent",
)
#: Calls a fault skips unless ``calls`` names them: a faulted member can still be
#: finalized and initialized again. (``C_GetFunctionList`` is the shim's own: never faulted.)
LIBRARY_CALLS: tuple[str, ...] = ("C_Initialize", "C_Finalize", "C_GetInfo")
_MAX_CKR = 0xFFFFFFFF


# -- CKR codes and call names ----------------------------------------------------------------


def ckr_code(value: str | int) -> int:
    """A CKR code from a name (``DEVICE_ERROR``, ``CKR_DEVICE_ERROR``), ``0xNN`` or an int."""
    if isinstance(value, bool):
        raise HarnessError(f"not a CKR code: {value!r}")
    if isinstance(value, int):
        code = value
    elif isinstance(value, str):
        text = value.strip()
        name = text.upper().removeprefix("CKR_")
        if name in CKR_CODES:
            return CKR_CODES[name]
        try:
            code = int(text, 16) if text.lower().startswith("0x") else int(text, 10)
        except ValueError:
            known = ", ".join(CKR_CODES)
            raise HarnessError(
                f"unknown CKR code {value!r}; give one of {known}, or 0xNN"
            ) from None
    else:
        raise HarnessError(f"not a CKR code: {value!r}")
    if not 0 < code <= _MAX_CKR:
        raise HarnessError(f"CKR code {value!r} is out of range (0x1 to 0xFFFFFFFF; 0 is CKR_OK)")
    return code


def ckr_name(code: int) -> str | None:
    """``DEVICE_ERROR`` for 0x30; None for a code not in :data:`CKR_CODES`."""
    return _NAMES_BY_CODE.get(code)


def parse_calls(calls: str | Iterable[str] | None) -> tuple[str, ...] | None:
    """Validated call names (``C_`` prefix optional, ``*`` for all); None for the default."""
    if calls is None:
        return None
    items = calls.split(",") if isinstance(calls, str) else list(calls)
    out: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise HarnessError(f"not a PKCS#11 function name: {item!r}")
        name = item.strip()
        if not name:
            continue
        if name != "*" and not name.startswith("C_"):
            name = "C_" + name
        if name != "*" and name not in PKCS11_FUNCTIONS:
            raise HarnessError(
                f"unknown PKCS#11 function {item.strip()!r} (expected e.g. "
                f"C_Encrypt, C_Decrypt, C_WrapKey, or * for every call)"
            )
        if name == "C_GetFunctionList":
            raise HarnessError("C_GetFunctionList is the shim's own and can't be faulted")
        if name not in out:
            out.append(name)
    if not out:
        raise HarnessError("calls names no PKCS#11 function")
    return ("*",) if "*" in out else tuple(out)


def non_negative_ms(value: int | None, what: str) -> int:
    """``value`` (None: 0) as milliseconds; :class:`HarnessError` unless a whole number >= 0."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise HarnessError(f"{what} must be a whole number of milliseconds >= 0, not {value!r}")
    return value


# -- the control file --------------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    """What one member's control file says (see ``docs/FAULTS.md``).

    ``error`` 0 means "no error" (latency or hang only); ``calls`` None means every call
    except :data:`LIBRARY_CALLS`; ``until_ms`` is a Unix time in milliseconds after which
    the fault is over (None: until healed).
    """

    error: int = 0
    delay_ms: int = 0
    hang: bool = False
    calls: tuple[str, ...] | None = None
    until_ms: int | None = None

    def to_text(self) -> str:
        lines = ["# hsm.testing fault control file: delete it to heal"]
        if self.error:
            lines.append(f"error=0x{self.error:X}")
        if self.delay_ms:
            lines.append(f"delay_ms={self.delay_ms}")
        if self.hang:
            lines.append("hang=1")
        if self.calls is not None:
            lines.append("calls=" + ",".join(self.calls))
        if self.until_ms is not None:
            lines.append(f"until_ms={self.until_ms}")
        return "\n".join(lines) + "\n"

    @classmethod
    def parse(cls, text: str) -> Fault:
        """Read a control file the way the shim does (unknown keys ignored)."""
        values: dict[str, str] = {}
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#") or "=" not in line:
                continue
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()

        def number(key: str, base: int) -> int:
            try:
                return int(values.get(key, "0"), base)
            except ValueError:
                return 0

        calls = values.get("calls")
        until = number("until_ms", 10)
        return cls(
            error=number("error", 0),
            delay_ms=max(0, number("delay_ms", 10)),
            hang=number("hang", 10) != 0,
            calls=None if calls is None else tuple(c.strip() for c in calls.split(",")
                                                   if c.strip()),
            until_ms=until if until > 0 else None,
        )

    @property
    def expired(self) -> bool:
        return self.until_ms is not None and time.time() * 1000 >= self.until_ms

    def describe(self) -> str:
        """One line for people: what calls see."""
        parts = []
        if self.hang:
            parts.append("calls hang")
        if self.delay_ms:
            parts.append(f"calls wait {self.delay_ms} ms")
        if self.error:
            name = ckr_name(self.error)
            parts.append(f"calls return CKR_{name} (0x{self.error:X})" if name
                         else f"calls return 0x{self.error:X}")
        what = ", then ".join(parts) or "no effect"
        if self.calls is None:
            scope = "every call but " + ", ".join(LIBRARY_CALLS)
        elif self.calls == ("*",):
            scope = "every call"
        else:
            scope = ", ".join(self.calls)
        text = f"{what} ({scope})"
        if self.until_ms is not None:
            left = self.until_ms / 1000 - time.time()
            text += " [expired]" if left <= 0 else f" for {left:.1f} s more"
        return text

    def as_dict(self) -> dict[str, Any]:
        return {
            "error": f"0x{self.error:X}" if self.error else None,
            "error_name": ckr_name(self.error) if self.error else None,
            "delay_ms": self.delay_ms,
            "hang": self.hang,
            "calls": list(self.calls) if self.calls is not None else None,
            "until_ms": self.until_ms,
            "expired": self.expired,
        }


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` in one rename: the shim never reads half a file."""
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as out:
            out.write(text)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
