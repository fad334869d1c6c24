"""SoftHSM2 itself: finding its module, its config file, initializing tokens.

This module never loads a PKCS#11 module in-process (that belongs to :mod:`hsm.pkcs11`):
tokens are initialized through PKCS#11 by :mod:`hsm.pkcs11.tokeninit`, in a child process
that gets the PINs on its stdin (never on a command line) and each member's
``SOFTHSM2_CONF`` in its environment. PINs never appear in messages, reprs or logs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from hsm.testing.layout import HarnessError

__all__ = [
    "INSTALL_HINT",
    "MODULE_CANDIDATES",
    "MODULE_ENV",
    "TokenSpec",
    "check_path",
    "find_softhsm_module",
    "init_tokens",
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
_INIT_TIMEOUT_S = 60.0
_TOKENINIT = "hsm.pkcs11.tokeninit"  # run as a program: it loads the modules, not we


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


@dataclass(frozen=True)
class TokenSpec:
    """One token to initialize: in the first free slot of ``module``, read with ``conf``."""

    module: Path
    conf: Path
    label: str


def init_tokens(tokens: Sequence[TokenSpec], *, pin: str, so_pin: str) -> list[str]:
    """Initialize each token (``C_InitToken``, then ``C_InitPIN`` as the security officer)
    with these PINs; return their serials, in order.

    Done by :mod:`hsm.pkcs11.tokeninit` in one child process, the PINs on its stdin: no PIN
    is ever on a command line (``/proc/*/cmdline`` is world-readable) and this process loads
    no PKCS#11 module.
    """
    request = {"pin": pin, "so_pin": so_pin,
               "tokens": [{"module": str(t.module), "label": t.label,
                           "env": {"SOFTHSM2_CONF": str(t.conf)}} for t in tokens]}
    env = dict(os.environ)
    env.pop("SOFTHSM2_CONF", None)  # each token's own is set before its C_Initialize
    # The child imports this very hsm, wherever it was imported from here.
    here = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (here, env.get("PYTHONPATH"))))
    secrets_ = (pin, so_pin)
    try:
        done = subprocess.run(
            [sys.executable, "-m", _TOKENINIT], input=json.dumps(request), env=env,
            capture_output=True, text=True, timeout=_INIT_TIMEOUT_S, check=False,
        )
    except subprocess.TimeoutExpired:
        raise HarnessError("initializing the SoftHSM tokens timed out") from None
    except OSError as exc:
        raise HarnessError(f"can't run {sys.executable}: {exc.strerror}") from None
    if done.returncode != 0:
        detail = " ".join(_scrub(done.stderr or done.stdout, secrets_).split())[:400]
        raise HarnessError(f"initializing the SoftHSM tokens failed (exit {done.returncode}): "
                           f"{detail or 'no message'}")
    try:
        serials = json.loads(done.stdout)["serials"]
    except (ValueError, KeyError, TypeError):
        serials = None
    if not isinstance(serials, list) or len(serials) != len(tokens) \
            or not all(isinstance(s, str) and s for s in serials):
        raise HarnessError("initializing the SoftHSM tokens gave no serials")
    return serials


def _scrub(text: str, secrets_: tuple[str, ...]) -> str:
    for value in secrets_:
        if value:
            text = text.replace(value, "***")
    return text
