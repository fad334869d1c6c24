"""The fault-injection shim: its C source (``p11shim.c``, in this package) and the code that
compiles it and installs a copy per member.

The shim is a pass-through PKCS#11 module: it forwards every call to the member's SoftHSM
copy and, before each call, reads the member's control file (see :mod:`hsm.testing.faults`
and ``docs/FAULTS.md``). It is built here with the system ``cc`` against the ``pkcs11.h`` of
``libp11-kit-dev``, cached by the hash of its source and build command.

Nothing here loads a PKCS#11 module: the shim is compiled and copied, never called.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
from importlib import resources
from pathlib import Path

from hsm.testing.layout import HarnessError

__all__ = [
    "BUILD_HINT",
    "CACHE_ENV",
    "CFLAGS",
    "INCLUDE_CANDIDATES",
    "INCLUDE_ENV",
    "LIBS",
    "compiled_shim",
    "install_shim",
    "sidecar",
]

log = logging.getLogger(__name__)

SHIM_SOURCE = "p11shim.c"
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
BUILD_HINT = "install them with `apt-get install libp11-kit-dev gcc libc6-dev`"
_CC_TIMEOUT_S = 120.0


def _shim_source() -> bytes:
    return resources.files(__name__).joinpath(SHIM_SOURCE).read_bytes()


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


def install_shim(compiled: Path, dest: Path, *, real_module: Path, control: Path,
                 count: Path) -> None:
    """Copy the compiled shim to ``dest`` and write its sidecar naming ``real_module``,
    ``control`` and ``count`` (the paths the shim will use, i.e. the final ones)."""
    for path in (real_module, control, count):
        text = str(path)
        if "\n" in text or "\r" in text or not path.is_absolute():
            raise HarnessError(f"the shim needs an absolute path without newlines, not {text!r}")
    shutil.copyfile(compiled, dest)
    os.chmod(dest, 0o700)
    sidecar(dest).write_text(
        "# hsm.testing fault-injection shim: the module it forwards to, its control file,\n"
        "# the file that turns call counting on\n"
        f"module={real_module}\ncontrol={control}\ncount={count}\n",
        encoding="utf-8",
    )
