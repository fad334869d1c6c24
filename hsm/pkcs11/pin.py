"""Where a PIN comes from: ``env:VAR``, ``file:PATH`` or ``prompt``; never the config itself.

A PIN read from its source is held in a :class:`Secret`, whose repr and str never show it.
"""

from __future__ import annotations

import getpass
import logging
import os
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hsm.errors import PinSourceError

__all__ = ["PinSource", "Secret"]

log = logging.getLogger(__name__)


class Secret:
    """A PIN in memory. ``repr``/``str`` hide it; ``reveal()`` hands it to the HSM call."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret(***)"

    __str__ = __repr__

    def __reduce__(self) -> str | tuple[Any, ...]:
        raise TypeError("a Secret can't be pickled")


@dataclass(frozen=True)
class PinSource:
    """A parsed PIN source. ``kind`` is ``env``, ``file`` or ``prompt``; ``where`` the name."""

    kind: str
    where: str = ""
    prompt_text: str = field(default="HSM user PIN: ", compare=False)

    @classmethod
    def parse(cls, spec: str, *, prompt_text: str = "HSM user PIN: ") -> PinSource:
        if not isinstance(spec, str):
            raise PinSourceError("pin must be a string: env:VAR, file:PATH or prompt")
        if spec == "prompt":
            return cls("prompt", "", prompt_text)
        kind, sep, where = spec.partition(":")
        if sep and kind in ("env", "file") and where:
            return cls(kind, where, prompt_text)
        # Never echo the value: it may be the PIN itself.
        raise PinSourceError(
            "pin must be env:VAR, file:PATH or prompt (the PIN itself never goes in the config)"
        )

    def __str__(self) -> str:
        return "prompt" if self.kind == "prompt" else f"{self.kind}:{self.where}"

    def read(self, *, ask: Callable[[str], str] | None = None) -> Secret:
        """Read the PIN now. ``ask`` replaces the terminal prompt (tests, GUIs)."""
        if self.kind == "env":
            value = os.environ.get(self.where)
            if not value:
                raise PinSourceError(f"PIN environment variable {self.where} is not set")
            return Secret(value)
        if self.kind == "file":
            return Secret(_read_pin_file(Path(self.where)))
        if ask is None:
            if not _has_terminal():
                raise PinSourceError("pin = 'prompt' needs a terminal; use env:VAR or file:PATH")
            ask = getpass.getpass
        value = ask(self.prompt_text)
        if not value:
            raise PinSourceError("no PIN was entered")
        return Secret(value)


def _has_terminal() -> bool:
    """getpass reads from the controlling terminal, so stdin may be a pipe."""
    try:
        with open("/dev/tty", "rb"):
            return True
    except OSError:
        return sys.stdin.isatty()


def _read_pin_file(path: Path) -> str:
    try:
        st = path.stat()
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PinSourceError(f"PIN file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PinSourceError(f"PIN file {path} can't be read: {type(exc).__name__}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("PIN file %s is readable by group or others; chmod 600 it", path)
    value = text.rstrip("\r\n")
    if not value:
        raise PinSourceError(f"PIN file {path} is empty")
    return value
