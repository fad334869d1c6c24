"""``hsm data-key``, ``hsm wrap``, ``hsm unwrap``: data keys sealed under a master key.

Key material travels as base64: ``wrap`` and ``unwrap`` read it from stdin (whitespace is
ignored) and write it to stdout. Plaintext shown to the user is what they asked for; the
buffers holding it here are wiped once it has been encoded.
"""

from __future__ import annotations

import click

from hsm.cli._common import (
    b64,
    common_options,
    context_option,
    emit,
    open_client,
    read_base64_stdin,
)
from hsm.keys import parse_blob

__all__ = ["data_key", "unwrap", "wrap"]

_KEY_HELP = "Master key id (see 'hsm key list')."


@click.command("data-key")
@click.option("--key", "key_id", required=True, metavar="KEY_ID", help=_KEY_HELP)
@context_option
@common_options
def data_key(key_id: str, context: dict[str, str]) -> None:
    """Generate a 32-byte data key: print it in plaintext and sealed under KEY_ID (base64).

    Keep the sealed blob with your data; 'hsm unwrap' with the same --context gives the
    plaintext back.
    """
    with open_client() as client:
        dk = client.generate_data_key(key_id, context)
    try:
        plaintext = b64(dk.plaintext)
    finally:
        dk.wipe()
    wrapped = b64(dk.wrapped)
    emit(
        {"key_id": dk.key_id, "version": dk.version, "plaintext": plaintext, "wrapped": wrapped},
        f"key_id:    {dk.key_id}\nversion:   {dk.version}\n"
        f"plaintext: {plaintext}\nwrapped:   {wrapped}",
    )


@click.command()
@click.option("--key", "key_id", required=True, metavar="KEY_ID", help=_KEY_HELP)
@context_option
@common_options
def wrap(key_id: str, context: dict[str, str]) -> None:
    """Seal key material (base64 on stdin) under KEY_ID; print the sealed blob (base64)."""
    material = read_base64_stdin("the key material")
    try:
        with open_client() as client:
            wrapped = client.wrap(key_id, material, context)
    finally:
        material[:] = bytes(len(material))
    blob = b64(wrapped)
    version = parse_blob(wrapped).version
    emit({"key_id": key_id, "version": version, "wrapped": blob}, blob)


@click.command()
@context_option
@common_options
def unwrap(context: dict[str, str]) -> None:
    """Open a sealed blob (base64 on stdin) with its --context; print the plaintext (base64).

    The blob names its own master key and version.
    """
    blob = bytes(read_base64_stdin("a sealed blob"))
    parse_blob(blob)  # a malformed blob fails here, before any HSM is touched
    with open_client() as client:
        plaintext = client.unwrap(blob, context)
    try:
        encoded = b64(plaintext)
    finally:
        plaintext[:] = bytes(len(plaintext))
    emit({"plaintext": encoded}, encoded)
