"""The client applications use: ``with hsm.open("hsm.toml") as client: ...``.

Until the cluster layer lands, a client serves every call from the first member of the
config; ``status()`` reports on every member.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hsm.config import Config, MemberConfig, load_config
from hsm.errors import HSMError, OperationFailed
from hsm.keys import DataKey, KeyInfo, Keyring
from hsm.pkcs11 import Module, SessionPool

__all__ = ["Client", "MemberStatus", "open"]


@dataclass(frozen=True)
class MemberStatus:
    """What ``hsm status`` shows for one member. No PIN, no key material."""

    name: str
    module: str
    token_label: str = ""
    token_serial: str = ""
    reachable: bool = False
    os_locking: bool = False
    mechanisms: Mapping[str, Any] = field(default_factory=dict)
    keys: int = 0
    error: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "module": self.module,
            "token_label": self.token_label,
            "token_serial": self.token_serial,
            "reachable": self.reachable,
            "os_locking": self.os_locking,
            "mechanisms": dict(self.mechanisms),
            "keys": self.keys,
            "error": self.error,
        }


class _Connection:
    """One member's module, pool and keyring, opened together and released together."""

    def __init__(self, member: MemberConfig, *, allow_unsafe_keys: bool) -> None:
        self.member = member
        self.module = Module.acquire(member.module, member.env)
        try:
            pool = SessionPool.acquire(self.module, member.token, member.pin,
                                       size=member.pool_size)
            try:
                self.keyring = Keyring(pool, allow_unsafe_keys=allow_unsafe_keys).open()
            except BaseException:
                pool.release()
                raise
        except BaseException:
            self.module.release()
            raise

    def close(self) -> None:
        try:
            self.keyring.pool.release()
        finally:
            self.module.release()

    def status(self) -> MemberStatus:
        pool = self.keyring.pool
        return MemberStatus(
            name=self.member.name, module=self.member.module,
            token_label=pool.token_label, token_serial=pool.token_serial, reachable=True,
            os_locking=self.module.os_locking, mechanisms=self.keyring.mechanisms.as_dict(),
            keys=len(self.keyring.list_keys()),
        )


class Client:
    """Master keys and data keys over the members of one config. Thread-safe."""

    def __init__(self, config: Config, *, allow_unsafe_keys: bool = False) -> None:
        self.config = config
        self.allow_unsafe_keys = allow_unsafe_keys
        self._primary: _Connection | None = None
        self._ring: Keyring | None = None  # the primary's keyring, read on every call

    def open(self) -> Client:
        if self._primary is None:
            self._primary = _Connection(self.config.members[0],
                                        allow_unsafe_keys=self.allow_unsafe_keys)
            self._ring = self._primary.keyring
        return self

    def close(self) -> None:
        primary, self._primary = self._primary, None
        self._ring = None
        if primary is not None:
            primary.close()

    def __enter__(self) -> Client:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def _keyring(self) -> Keyring:
        return self._ring or self._not_open()

    @staticmethod
    def _not_open() -> Keyring:
        raise OperationFailed("client is not open; use 'with hsm.open(...) as client'",
                              reason="not_open")

    # -- master keys -----------------------------------------------------------------------

    def create_key(self) -> KeyInfo:
        """Create a master key (AES-256, non-extractable) inside the HSM."""
        return self._keyring.create_key()

    def list_keys(self) -> list[KeyInfo]:
        """Every master key id and version the HSM holds, with its KCV."""
        return self._keyring.list_keys()

    def key_info(self, key_id: str, version: int | None = None) -> KeyInfo:
        return self._keyring.key_info(key_id, version)

    # -- data keys -------------------------------------------------------------------------

    def generate_data_key(self, key_id: str, context: Mapping[str, str] | None = None,
                          ) -> DataKey:
        """A fresh 32-byte data key: ``.plaintext`` (bytearray) and ``.wrapped`` (bytes)."""
        return (self._ring or self._not_open()).generate_data_key(key_id, context)

    def wrap(self, key_id: str, plaintext: bytes | bytearray,
             context: Mapping[str, str] | None = None) -> bytes:
        """Seal key material under ``key_id``, bound to ``context``."""
        return (self._ring or self._not_open()).wrap(key_id, plaintext, context)

    def unwrap(self, blob: bytes, context: Mapping[str, str] | None = None) -> bytearray:
        """Open a sealed blob with the same context it was sealed with."""
        return (self._ring or self._not_open()).unwrap(blob, context)

    def generate_random(self, size: int) -> bytes:
        return self._keyring.generate_random(size)

    # -- status ----------------------------------------------------------------------------

    def status(self) -> list[MemberStatus]:
        """One :class:`MemberStatus` per member; unreachable members carry the error."""
        out = []
        for member in self.config.members:
            if self._primary is not None and member is self._primary.member:
                out.append(self._primary.status())
            else:
                out.append(member_status(member, allow_unsafe_keys=self.allow_unsafe_keys))
        return out

    def __repr__(self) -> str:
        where = self.config.path or "<config>"
        state = "open" if self._primary is not None else "closed"
        return f"<hsm.Client {where} members={len(self.config.members)} {state}>"


def member_status(member: MemberConfig, *, allow_unsafe_keys: bool = False) -> MemberStatus:
    """Connect to one member just long enough to describe it."""
    try:
        connection = _Connection(member, allow_unsafe_keys=allow_unsafe_keys)
    except HSMError as exc:
        return MemberStatus(name=member.name, module=member.module, error=str(exc))
    try:
        return connection.status()
    except HSMError as exc:
        return MemberStatus(name=member.name, module=member.module, error=str(exc))
    finally:
        connection.close()


def open(
    config: Config | str | os.PathLike[str] | None = None, *, allow_unsafe_keys: bool = False,
) -> Client:
    """Open a client on the config at ``config`` (or ``$HSM_CONFIG``, or ``./hsm.toml``)."""
    if not isinstance(config, Config):
        config = load_config(config)
    return Client(config, allow_unsafe_keys=allow_unsafe_keys).open()
