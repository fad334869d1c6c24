"""Security: PINs and plaintext keys never reach a log, a repr or an error message."""

from __future__ import annotations

import base64
import logging

import pytest

import hsm
from hsm.config import load_config
from hsm.testing import Harness


def _forms(secret: bytes | str) -> list[str]:
    raw = secret.encode() if isinstance(secret, str) else bytes(secret)
    return [raw.hex(), base64.b64encode(raw).decode(), repr(raw)[2:-1], raw.decode("latin-1")]


def test_no_secret_in_logs_reprs_or_errors(
    hsm_harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """A whole session (open, create, data key, unwrap, refused context, bad input, close),
    logged at DEBUG, shows neither the PIN nor any plaintext key in any form."""
    pin = hsm_harness.pin_file.read_text().strip()
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []
    plaintexts: list[bytes] = []
    with hsm.open(hsm_harness.config_path) as client:
        key = client.create_key()
        dk = client.generate_data_key(key.key_id, context={"tenant": "acme"})
        plaintexts.append(bytes(dk.plaintext))
        material = bytes(range(32))
        plaintexts.append(material)
        blob = client.wrap(key.key_id, material)
        client.unwrap(blob)
        for call in (
            lambda: client.unwrap(dk.wrapped, context={"tenant": "x"}),
            lambda: client.unwrap(dk.wrapped[:-1]),
            lambda: client.wrap(key.key_id, b""),
            lambda: client.wrap("nope", material),
        ):
            with pytest.raises(hsm.HSMError) as info:
                call()
            seen += [str(info.value), repr(info.value)]
        keyring = client._keyring
        seen += [repr(client), repr(dk), repr(key), repr(keyring.pool), repr(keyring),
                 repr(load_config(hsm_harness.config_path)), str(client.status())]
        with keyring.pool.session() as lease:
            seen.append(repr(lease))
    seen += [record.getMessage() for record in caplog.records]
    text = "\n".join(seen)
    assert pin not in text
    for plaintext in plaintexts:
        for form in _forms(plaintext):
            assert form not in text
