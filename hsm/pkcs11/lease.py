"""A worker session on loan from a :class:`~hsm.pkcs11.pool.SessionPool`, and the typed
calls made on it (finding, generating and creating keys, random bytes)."""

from __future__ import annotations

from typing import Any

from hsm.pkcs11.calls import create_key, find_keys, generate_key
from hsm.pkcs11.calls import random_bytes as _random_bytes
from hsm.pkcs11.objects import KeyTemplate, SecretKey

__all__ = ["Lease"]


class Lease:
    """A worker session on loan, with the key objects already found in it (``keys``, the
    caller's cache: forgotten after errors that make handles stale).

    The calls on the session are typed (:mod:`hsm.pkcs11.calls`); ``session`` is the
    python-pkcs11 session itself, for this package's edge modules.
    """

    __slots__ = ("generation", "keys", "keys_epoch", "session")

    def __init__(self, session: Any, generation: int, keys_epoch: int = 0) -> None:
        self.session = session
        self.generation = generation
        self.keys: dict[Any, SecretKey] = {}
        self.keys_epoch = keys_epoch

    def find_keys(self, label: str | None = None, *, operation: str = "find key",
                  ) -> list[SecretKey]:
        """The secret keys on the token (labelled ``label`` if given). Empty may also mean a
        lost token: :meth:`SessionPool.check_token` tells them apart."""
        return find_keys(self.session, label, operation=operation)

    def generate_key(self, template: KeyTemplate, size: int, *,
                     operation: str = "create key") -> SecretKey:
        """A new secret key of ``size`` bytes generated inside the HSM, exactly ``template``."""
        return generate_key(self.session, template, size, operation=operation)

    def create_key(self, template: KeyTemplate, value: bytes | bytearray, *,
                   operation: str = "create key") -> SecretKey:
        """A new secret key holding ``value``, exactly ``template`` (tests, key import)."""
        return create_key(self.session, template, value, operation=operation)

    def random(self, size: int) -> bytes:
        """``size`` bytes from the token's random number generator."""
        return _random_bytes(self.session, size)

    def __repr__(self) -> str:
        return f"Lease(generation={self.generation}, keys={len(self.keys)})"
