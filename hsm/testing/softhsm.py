"""SoftHSM2 itself: finding its module and ``softhsm2-util``, its config file, initializing a
token.

This module never loads a PKCS#11 module in-process (that belongs to :mod:`hsm.pkcs11`); it
drives ``softhsm2-util`` in subprocesses whose environment alone carries ``SOFTHSM2_CONF``.
PINs never appear in messages, reprs or logs: ``softhsm2-util``'s output is scrubbed of them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from importlib import resources
from pathlib import Path

from hsm.testing.layout import HarnessError

__all__ = [
    "INSTALL_HINT",
    "MODULE_CANDIDATES",
    "MODULE_ENV",
    "check_path",
    "find_softhsm_module",
    "find_util",
    "init_token",
    "write_conf",
]

#: Where SoftHSM2's module lives when ``$HSM_SOFTHSM_MODULE`` is not set (Debian first).
MODULE_CANDIDATES: tuple[str, ...] = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib64/pkcs11/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
    "/opt/homebrew/lib/softhsm/libsofthsm2.so",
)
MODULE_ENV = "HSM_SOFTHSM_MODULE"
INSTALL_HINT = "install it with `apt-get install softhsm2`"

# SoftHSM's config reader cuts a value at '#' (comment) and '='; a newline ends the line.
_CONF_FORBIDDEN = frozenset("#=\n\r")
_UTIL_TIMEOUT_S = 30.0


# -- finding SoftHSM ----------------------------------------------------------------------


def find_softhsm_module() -> Path:
    """The SoftHSM2 PKCS#11 module: ``$HSM_SOFTHSM_MODULE``, else the usual install paths."""
    override = os.environ.get(MODULE_ENV)
    if override:
        path = Path(override).expanduser()
        if not path.is_file():
            raise HarnessError(f"{MODULE_ENV}={override} is not a file")
        return path.absolute()
    for candidate in MODULE_CANDIDATES:
        path = Path(candidate)
        if path.is_file():
            return path
    raise HarnessError(
        f"SoftHSM2 module libsofthsm2.so not found (looked in {', '.join(MODULE_CANDIDATES)}); "
        f"{INSTALL_HINT}, or set {MODULE_ENV} to its path"
    )


def find_util() -> str:
    """``softhsm2-util`` on ``PATH``."""
    util = shutil.which("softhsm2-util")
    if util is None:
        raise HarnessError(f"softhsm2-util not found on PATH; {INSTALL_HINT}")
    return util


# -- softhsm2.conf --------------------------------------------------------------------------


def check_path(path: Path) -> None:
    """Refuse a path that SoftHSM's config file can't hold (``#``, ``=``, newlines)."""
    text = str(path)
    bad = sorted(_CONF_FORBIDDEN.intersection(text))
    if bad:
        raise HarnessError(
            f"harness path {text!r} contains {' '.join(map(repr, bad))}, which SoftHSM's "
            f"config file can't hold; choose another directory"
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise HarnessError(f"harness path {text!r} is not valid UTF-8") from None


def write_conf(conf: Path, token_dir: Path) -> None:
    """Write a ``softhsm2.conf`` (from the ``softhsm2.conf.in`` template) naming ``token_dir``."""
    check_path(token_dir)
    template = resources.files("hsm.testing").joinpath("softhsm2.conf.in").read_text(
        encoding="utf-8"
    )
    conf.write_text(template.replace("@TOKENDIR@", str(token_dir)), encoding="utf-8")


# -- tokens ---------------------------------------------------------------------------------


def init_token(util: str, module: Path, conf: Path, label: str, *, pin: str,
               so_pin: str) -> str:
    """Initialize a token labelled ``label`` in the free slot of ``module`` (configured by
    ``conf``) with these PINs; return its serial."""
    env = {**os.environ, "SOFTHSM2_CONF": str(conf)}
    secrets_ = (pin, so_pin)
    _run(util, ["--module", str(module), "--init-token", "--free", "--label", label,
                "--pin", pin, "--so-pin", so_pin], env, label, secrets_)
    shown = _run(util, ["--module", str(module), "--show-slots"], env, label, secrets_)
    return _serial_for(shown, label)


def _run(util: str, args: list[str], env: dict[str, str], member: str,
         secrets_: tuple[str, ...]) -> str:
    action = args[2] if len(args) > 2 else "softhsm2-util"
    try:
        done = subprocess.run(
            [util, *args],
            env=env,
            stdin=subprocess.DEVNULL,  # never let it prompt
            capture_output=True,
            text=True,
            timeout=_UTIL_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise HarnessError(f"softhsm2-util {action} for member {member} timed out") from None
    except OSError as exc:
        raise HarnessError(f"can't run softhsm2-util: {exc.strerror}") from None
    if done.returncode != 0:
        detail = _scrub((done.stderr or done.stdout).strip(), secrets_) or "no message"
        raise HarnessError(
            f"softhsm2-util {action} for member {member} failed "
            f"(exit {done.returncode}): {detail}"
        )
    return done.stdout


def _scrub(text: str, secrets_: tuple[str, ...]) -> str:
    for value in secrets_:
        if value:
            text = text.replace(value, "***")
    return text


def _serial_for(show_slots: str, label: str) -> str:
    """The serial of the initialized token labelled ``label`` in ``--show-slots`` output."""
    found: list[str] = []
    serial = ""
    for line in show_slots.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key, value = key.strip(), value.strip()
        if key == "Serial number":
            serial = value
        elif key == "Label":
            if value == label and serial:
                found.append(serial)
            serial = ""
    if len(found) != 1:
        raise HarnessError(
            f"softhsm2-util --show-slots shows {len(found)} token(s) labelled {label!r}; "
            f"expected exactly one"
        )
    return found[0]
