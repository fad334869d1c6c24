"""Envelope encryption: data encrypted under a data key, the data key sealed under an HSM
master key. Messages, streams of any size, the data-key cache.

Applications use the client: ``client.encrypt(...)``, ``client.encrypt_stream(...)``.
"""

from hsm.envelope.format import DEFAULT_FRAME, FRAME_MAX, FRAME_MIN, Header, read_header
from hsm.envelope.message import (
    StreamSummary,
    Unwrapper,
    decrypt,
    decrypt_stream,
    encrypt,
    encrypt_stream,
    open_message,
)

__all__ = [
    "DEFAULT_FRAME",
    "FRAME_MAX",
    "FRAME_MIN",
    "Header",
    "StreamSummary",
    "Unwrapper",
    "decrypt",
    "decrypt_stream",
    "encrypt",
    "encrypt_stream",
    "open_message",
    "read_header",
]
