"""What every ``hsm`` command shares: options, output, errors, context and stdin parsing.

Conventions (docs/DESIGN.md, "CLI"): every command takes ``--config`` and ``--json``;
``--json`` prints exactly one JSON object on stdout; exit 0 on success, 1 when the operation
failed (one ``hsm: error: ...`` line on stderr), 2 on a usage error (click's own).
"""

from __future__ import annotations

import base64
import binascii
import json
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any, TypeVar

import click

from hsm.client import Client
from hsm.config import Config, load_config
from hsm.errors import ContextMismatch, HSMError, InvalidCiphertext, PinIncorrect, Reason

__all__ = [
    "CLIError",
    "Settings",
    "b64",
    "common_options",
    "context_option",
    "describe",
    "emit",
    "load",
    "open_client",
    "read_base64_stdin",
    "settings",
    "stdout_is_terminal",
]

F = TypeVar("F", bound=Callable[..., Any])

_TAMPERED_HINT = ("the blob was altered, sealed under another key, "
                  "or bound to another context")


class CLIError(click.ClickException):
    """An operation failed: one ``hsm: error: <message>`` line on stderr, exit status 1."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        # One line, whatever the message: a stray newline must not look like a second error.
        super().__init__(" ".join(message.split()))

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"hsm: error: {self.format_message()}", file=file, err=file is None)


def describe(exc: HSMError) -> str:
    """The one-line message for an :class:`HSMError`: what failed and, where it helps, why.

    Library messages never hold PINs or key material, and neither do the hints added here.
    """
    if isinstance(exc, ContextMismatch):
        return exc.message  # says which context keys differ: more useful than any hint
    if isinstance(exc, InvalidCiphertext):
        if exc.reason is Reason.MALFORMED:
            return f"malformed input: {exc.message}"
        if exc.reason is Reason.TRUNCATED:
            return f"{exc.message} (the file was cut short)"
        return f"ciphertext does not verify ({_TAMPERED_HINT})"
    if isinstance(exc, PinIncorrect):
        if exc.reason is Reason.PIN_LOCKED:
            return f"{exc.message}: the user PIN is locked; the security officer must reset it"
        return (f"wrong PIN: {exc.message}; not retried, since HSMs lock the account "
                "after repeated failures")
    return exc.message or type(exc).__name__


# -- settings shared by the group and every command -----------------------------------------


@dataclass
class Settings:
    """``--config`` and ``--json``, given on the group (``hsm --json ...``) or the command."""

    config: str | None = None
    json: bool = False


def settings() -> Settings:
    return click.get_current_context().ensure_object(Settings)


def _store_config(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value is not None:
        ctx.ensure_object(Settings).config = value


def _store_json(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.ensure_object(Settings).json = True


def common_options(f: F) -> F:
    """Add ``--config PATH`` and ``--json`` (stored in the context's :class:`Settings`)."""
    f = click.option(
        "--json", "as_json", is_flag=True, expose_value=False, callback=_store_json,
        help="Print one JSON object on stdout instead of text.",
    )(f)
    return click.option(
        "--config", metavar="PATH", expose_value=False, callback=_store_config,
        help="Config file (default: $HSM_CONFIG, else ./hsm.toml).",
    )(f)


# -- output ----------------------------------------------------------------------------------


def emit(data: Mapping[str, Any], human: Callable[[], None] | str) -> None:
    """``data`` as one JSON object under ``--json``; otherwise ``human`` (text or a printer)."""
    if settings().json:
        click.echo(json.dumps(data, sort_keys=False))
    elif isinstance(human, str):
        click.echo(human)
    else:
        human()


# -- opening the client ----------------------------------------------------------------------


def load() -> Config:
    return load_config(settings().config)


@contextmanager
def open_client() -> Iterator[Client]:
    """An open client on the configured members (those that answer within the deadline);
    when none opens, the error names each member and why."""
    config = load()
    client = Client(config)
    client.open()  # an error names every member that failed, and why (main prints it)
    try:
        yield client
    finally:
        client.close()


# -- --context k=v ---------------------------------------------------------------------------


def _parse_context(_ctx: click.Context, _param: click.Parameter,
                   items: tuple[str, ...]) -> dict[str, str]:
    context: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE")
        if not key:
            raise click.BadParameter(f"{item!r} has an empty key")
        if key in context:
            raise click.BadParameter(f"key {key!r} is given twice")
        context[key] = value
    return context


def context_option(f: F) -> F:
    """``--context KEY=VALUE`` (repeatable) -> a ``context: dict[str, str]`` argument."""
    return click.option(
        "--context", "context", metavar="KEY=VALUE", multiple=True, callback=_parse_context,
        help="Encryption context pair, bound to the blob (repeatable; split on the first '=').",
    )(f)


# -- base64 on stdin -------------------------------------------------------------------------


def read_base64_stdin(what: str) -> bytearray:
    """Read base64 from stdin (whitespace anywhere is ignored); :class:`CLIError` if it isn't."""
    raw = sys.stdin.buffer.read()
    text = b"".join(raw.split())
    if not text:
        raise CLIError(f"expected {what} as base64 on stdin, got nothing")
    try:
        return bytearray(base64.b64decode(text, validate=True))
    except (binascii.Error, ValueError):
        raise CLIError(f"stdin is not valid base64 (expected {what} as base64)") from None


def b64(data: bytes | bytearray) -> str:
    return base64.b64encode(data).decode("ascii")


def stdout_is_terminal() -> bool:
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False
