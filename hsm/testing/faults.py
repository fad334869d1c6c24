"""Fault injection for harness members: a pass-through PKCS#11 module and lost tokens.

Each member of a harness built with faults (the default when a C compiler and the PKCS#11
header are installed) loads its SoftHSM copy through its own copy of a small C module, the
*shim* (``shim/p11shim.c``, built here with the system ``cc`` against the ``pkcs11.h`` of
``libp11-kit-dev``). The shim forwards every PKCS#11 call to the member's SoftHSM and,
before each call, reads the member's control file ``DIR/members/<name>/fault``: while it
exists, calls can be delayed, blocked or answered with any ``CKR_*`` code. Deleting the
file heals at once, with no re-initialize. See ``docs/FAULTS.md``.

Faults at the level users meet them need no shim: :meth:`FaultInjector.lose_token` renames
the member's token directory away, :meth:`FaultInjector.heal` puts it back, and
:func:`finalize_under` finalizes a loaded module under its client.

Nothing here loads a PKCS#11 module: the shim is compiled and copied, never called.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

from hsm.testing.softhsm import (
    CONTROL_FILE,
    MANIFEST,
    Harness,
    HarnessError,
    HarnessMember,
    load_harness,
)

__all__ = [
    "CKR_CODES",
    "CONTROL_FILE",
    "LIBRARY_CALLS",
    "PKCS11_FUNCTIONS",
    "Fault",
    "FaultInjector",
    "HealReport",
    "ckr_code",
    "ckr_name",
    "compiled_shim",
    "finalize_under",
    "install_shim",
    "parse_calls",
    "sidecar",
]

log = logging.getLogger(__name__)

#: Where a member's token directory goes while its token is "lost".
LOST_SUFFIX = ".lost"
#: The shim looks for an absent control file again within 1 ms; writers wait a little longer
#: so that every call that starts after inject()/heal() returns obeys the change.
SETTLE_S = 0.002

SHIM_SOURCE = "shim/p11shim.c"
#: Directory holding ``p11-kit/pkcs11.h`` (default: Debian's ``libp11-kit-dev`` location).
INCLUDE_ENV = "HSM_PKCS11_INCLUDE"
INCLUDE_CANDIDATES: tuple[str, ...] = (
    "/usr/include/p11-kit-1",
    "/usr/local/include/p11-kit-1",
    "/opt/homebrew/include/p11-kit-1",
)
#: Where compiled shims are cached (default ``$XDG_CACHE_HOME/hsm``, else ``~/.cache/hsm``).
CACHE_ENV = "HSM_SHIM_CACHE"
CFLAGS: tuple[str, ...] = ("-shared", "-fPIC", "-O2", "-fvisibility=hidden", "-Wall")
LIBS: tuple[str, ...] = ("-ldl", "-pthread")
BUILD_HINT = "install them with `apt-get install libp11-kit-dev gcc`"
_CC_TIMEOUT_S = 120.0

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


def _non_negative(value: int | None, what: str) -> int:
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


def _write_atomic(path: Path, text: str) -> None:
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


# -- building the shim ----------------------------------------------------------------------


def _shim_source() -> bytes:
    return resources.files("hsm.testing").joinpath(SHIM_SOURCE).read_bytes()


def _find_cc() -> list[str]:
    configured = os.environ.get("CC", "").strip()
    command = shlex.split(configured) if configured else ["cc"]
    found = shutil.which(command[0])
    if found is None:
        raise HarnessError(
            f"can't build the fault-injection shim: no C compiler ({command[0]}) "
            f"found; {BUILD_HINT}"
        )
    return [found, *command[1:]]


def _find_include() -> Path:
    override = os.environ.get(INCLUDE_ENV)
    candidates = (override,) if override else INCLUDE_CANDIDATES
    for candidate in candidates:
        if (Path(candidate) / "p11-kit" / "pkcs11.h").is_file():
            return Path(candidate)
    where = override or " or ".join(INCLUDE_CANDIDATES)
    raise HarnessError(
        f"can't build the fault-injection shim: p11-kit/pkcs11.h not found in "
        f"{where}; {BUILD_HINT}"
    )


def _cache_dir() -> Path | None:
    configured = os.environ.get(CACHE_ENV)
    try:
        if configured:
            base = Path(configured).expanduser()
        else:
            xdg = os.environ.get("XDG_CACHE_HOME")
            base = (Path(xdg) if xdg else Path.home() / ".cache") / "hsm"
        base.mkdir(mode=0o700, parents=True, exist_ok=True)
    except (OSError, RuntimeError):  # RuntimeError: no home directory to expand
        return None
    return base if os.access(base, os.W_OK | os.X_OK) else None


def compiled_shim(work: Path | None = None) -> Path:
    """The compiled shim for this machine: cached by the hash of its source and build command.

    Built with ``cc`` (or ``$CC``) against ``p11-kit/pkcs11.h``; the cache is ``$HSM_SHIM_CACHE``,
    else ``$XDG_CACHE_HOME/hsm``, else ``~/.cache/hsm``. If no cache directory is writable the
    shim is built in ``work``. Raises :class:`~hsm.testing.HarnessError` (naming the packages
    to install) when the compiler or the header is missing or the build fails.
    """
    source = _shim_source()
    cc = _find_cc()
    include = _find_include()
    command = [*cc, *CFLAGS, f"-I{include}"]
    digest = hashlib.sha256()
    digest.update(source)
    digest.update("\0".join([*command, *LIBS, platform.machine()]).encode())
    key = digest.hexdigest()[:20]
    cache = _cache_dir()
    where = cache if cache is not None else work
    if where is None:
        raise HarnessError("no writable directory to build the fault-injection shim in; "
                     f"set {CACHE_ENV}")
    target = where / f"libp11shim-{key}.so"
    if target.is_file():
        return target
    with tempfile.TemporaryDirectory(prefix=".p11shim-", dir=where) as tmp:
        src = Path(tmp) / "p11shim.c"
        src.write_bytes(source)
        out = Path(tmp) / "libp11shim.so"
        try:
            done = subprocess.run(
                [*command, "-o", str(out), str(src), *LIBS],
                stdin=subprocess.DEVNULL, capture_output=True, text=True,
                timeout=_CC_TIMEOUT_S, check=False,
            )
        except subprocess.TimeoutExpired:
            raise HarnessError("building the fault-injection shim timed out") from None
        except OSError as exc:
            raise HarnessError(f"can't run the C compiler {cc[0]}: {exc.strerror}") from None
        if done.returncode != 0 or not out.is_file():
            detail = " ".join((done.stderr or done.stdout).split())[:400] or "no message"
            raise HarnessError(
                f"building the fault-injection shim failed (exit {done.returncode}): "
                f"{detail}; {BUILD_HINT}"
            )
        os.replace(out, target)  # atomic: concurrent builders all leave a whole file
    log.debug("built the fault-injection shim %s", target)
    return target


def sidecar(shim: Path) -> Path:
    """The shim's configuration file: its own file name plus ``.conf``."""
    return shim.with_name(shim.name + ".conf")


def install_shim(compiled: Path, dest: Path, *, real_module: Path, control: Path) -> None:
    """Copy the compiled shim to ``dest`` and write its sidecar naming ``real_module`` and
    ``control`` (the paths the shim will use, i.e. the final ones)."""
    for path in (real_module, control):
        text = str(path)
        if "\n" in text or "\r" in text or not path.is_absolute():
            raise HarnessError(f"the shim needs an absolute path without newlines, not {text!r}")
    shutil.copyfile(compiled, dest)
    os.chmod(dest, 0o700)
    sidecar(dest).write_text(
        "# hsm.testing fault-injection shim: the module it forwards to, its control file\n"
        f"module={real_module}\ncontrol={control}\n",
        encoding="utf-8",
    )


# -- the injector ------------------------------------------------------------------------------


@dataclass(frozen=True)
class HealReport:
    """What :meth:`FaultInjector.heal` undid."""

    member: str
    fault_cleared: bool
    token_restored: bool

    def as_dict(self) -> dict[str, Any]:
        return {"member": self.member, "fault_cleared": self.fault_cleared,
                "token_restored": self.token_restored}


class FaultInjector:
    """Inject and heal faults on the members of one harness (any process may do it).

    ``inject``/``hang`` need a harness built with faults (the default); ``lose_token`` and
    ``heal`` work on every harness.
    """

    def __init__(self, harness: Harness) -> None:
        self.harness = harness

    @classmethod
    def for_config(cls, config: str | os.PathLike[str]) -> FaultInjector:
        """The injector for the harness whose ``hsm.toml`` is ``config``."""
        path = Path(config).expanduser()
        if not path.is_file():
            raise HarnessError(f"config {path} does not exist")
        directory = path.resolve().parent
        if not (directory / MANIFEST).is_file():
            raise HarnessError(
                f"config {path} is not a harness's hsm.toml ({directory} holds no "
                f"{MANIFEST}); faults work on harnesses made by `hsm harness up`"
            )
        return cls(load_harness(directory))

    def _member(self, member: str | HarnessMember) -> HarnessMember:
        return self.harness.member(member if isinstance(member, str) else member.name)

    def _shimmed(self, member: str | HarnessMember) -> HarnessMember:
        found = self._member(member)
        if not found.faults:
            raise HarnessError(
                f"member {found.name} loads SoftHSM directly (harness built without fault "
                f"injection: no C compiler or pkcs11.h then, or faults=False); only "
                f"lose-token and heal work on it"
            )
        return found

    # -- shim faults --------------------------------------------------------------------

    def inject(self, member: str | HarnessMember, error: str | int | None = None, *,
               delay_ms: int = 0, calls: str | Iterable[str] | None = None,
               duration_ms: int | None = None) -> Fault:
        """From now on, ``member``'s calls wait ``delay_ms`` and/or return ``error``.

        ``calls`` limits the fault to some PKCS#11 functions (``"C_Encrypt,C_Decrypt"``,
        ``["C_WrapKey"]``, ``"*"`` for all); by default every call but C_Initialize,
        C_Finalize and C_GetInfo. ``duration_ms`` ends the fault by itself.
        Replaces any fault already set on the member.
        """
        code = 0 if error is None else ckr_code(error)
        delay = _non_negative(delay_ms, "delay_ms")
        if not code and not delay:
            raise HarnessError("a fault needs an error code, a delay, or both")
        return self._set(member, Fault(error=code, delay_ms=delay, calls=parse_calls(calls),
                                       until_ms=self._until(duration_ms)))

    def hang(self, member: str | HarnessMember, ms: int | None = None, *,
             calls: str | Iterable[str] | None = None) -> Fault:
        """``member``'s calls block until :meth:`heal` (or, with ``ms``, for the next ``ms``
        milliseconds at most: then the member answers again by itself)."""
        if ms is not None and (_non_negative(ms, "ms") == 0):
            raise HarnessError("a hang of 0 ms is no hang")
        return self._set(member, Fault(hang=True, calls=parse_calls(calls),
                                       until_ms=self._until(ms)))

    @staticmethod
    def _until(duration_ms: int | None) -> int | None:
        if duration_ms is None:
            return None
        return int(time.time() * 1000) + _non_negative(duration_ms, "duration_ms")

    def _set(self, member: str | HarnessMember, fault: Fault) -> Fault:
        target = self._shimmed(member)
        _write_atomic(target.fault_control, fault.to_text())
        time.sleep(SETTLE_S)
        log.info("fault on %s: %s", target.name, fault.describe())
        return fault

    def fault(self, member: str | HarnessMember) -> Fault | None:
        """The fault set on ``member`` now (None if healthy; an expired one is returned)."""
        target = self._member(member)
        try:
            return Fault.parse(target.fault_control.read_text(encoding="ascii",
                                                              errors="replace"))
        except FileNotFoundError:
            return None

    def clear(self, member: str | HarnessMember) -> bool:
        """Delete ``member``'s control file; True if there was one."""
        try:
            self._member(member).fault_control.unlink()
        except FileNotFoundError:
            return False
        return True  # seen at once: the shim reads a control file it found on every call

    # -- token faults -------------------------------------------------------------------

    @staticmethod
    def _lost_dir(member: HarnessMember) -> Path:
        return member.token_dir.with_name(member.token_dir.name + LOST_SUFFIX)

    def token_lost(self, member: str | HarnessMember) -> bool:
        target = self._member(member)
        return self._lost_dir(target).exists() and not target.token_dir.exists()

    def lose_token(self, member: str | HarnessMember) -> Path:
        """Rename ``member``'s token directory away (as if the token were pulled); returns
        where it went. Its module fails until :meth:`restore_token` or :meth:`heal` and a
        re-initialize (SoftHSM does not notice the directory coming back by itself)."""
        target = self._member(member)
        lost = self._lost_dir(target)
        if self.token_lost(target):
            return lost
        if lost.exists():
            raise HarnessError(f"{lost} exists beside {target.token_dir}; remove one of them")
        try:
            os.rename(target.token_dir, lost)
        except OSError as exc:
            raise HarnessError(f"can't move {target.token_dir} away: {exc.strerror}") from None
        log.info("token of %s lost (%s)", target.name, lost)
        return lost

    def restore_token(self, member: str | HarnessMember) -> bool:
        """Put back a token directory taken by :meth:`lose_token`; True if it was lost."""
        target = self._member(member)
        lost = self._lost_dir(target)
        if not lost.exists():
            return False
        if target.token_dir.exists():
            raise HarnessError(f"both {target.token_dir} and {lost} exist; remove one of them")
        try:
            os.rename(lost, target.token_dir)
        except OSError as exc:
            raise HarnessError(f"can't restore {target.token_dir}: {exc.strerror}") from None
        log.info("token of %s restored", target.name)
        return True

    def heal(self, member: str | HarnessMember) -> HealReport:
        """Undo every fault on ``member``: delete its control file, restore its token."""
        target = self._member(member)
        cleared = self.clear(target)
        restored = self.restore_token(target)
        return HealReport(target.name, cleared, restored)

    def heal_all(self) -> list[HealReport]:
        return [self.heal(member) for member in self.harness.members]

    def __repr__(self) -> str:
        return f"FaultInjector({str(self.harness.directory)!r})"


def finalize_under(module: Any) -> None:
    """Finalize a loaded module behind its users' backs.

    ``module`` is an :class:`hsm.pkcs11.Module`, e.g. the one a client's member runs on.
    Its next call fails (not initialized) and the one after recovers by re-initializing.
    Uses the module's own ``finalize_behind_our_back`` when it has one (it waits for calls
    in flight: SoftHSM crashes when finalized under a running call), else ``C_Finalize``
    through python-pkcs11 directly.
    """
    behind = getattr(module, "finalize_behind_our_back", None)
    if callable(behind):
        behind()
    else:
        module.lib.finalize()
