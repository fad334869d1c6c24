"""A cluster member: the calls the cluster makes on one HSM, and the real implementation.

:class:`MemberBackend` is the interface the cluster logic depends on; :class:`HSMMember`
implements it over one module + token (module, session pool, keyring), and
:class:`hsm.testing.FakeMember` implements it in memory for testing the cluster logic.
"""

from __future__ import annotations

from typing import Any, Protocol

from hsm.config import MemberConfig
from hsm.errors import HSMError, HSMUnavailable, Reason
from hsm.keys import DataKey, KeyInfo, Keyring
from hsm.pkcs11 import Module, SessionPool

__all__ = ["HSMMember", "MemberBackend"]

_DIRECT = ("generate_data_key", "wrap", "unwrap")


class MemberBackend(Protocol):
    """One HSM as the cluster sees it. Every method may raise :class:`hsm.HSMError`."""

    name: str

    def open(self) -> None: ...
    def close(self) -> None: ...
    def ping(self) -> None: ...
    def generate_data_key(self, key_id: str, context: Any) -> DataKey: ...
    def wrap(self, key_id: str, plaintext: bytes | bytearray, context: Any) -> bytes: ...
    def unwrap(self, blob: bytes, context: Any) -> bytearray: ...
    def encrypt_direct(self, key_id: str, plaintext: bytes | bytearray | memoryview,
                       context: Any) -> bytes: ...
    def decrypt_direct(self, blob: bytes, context: Any) -> bytes: ...
    def generate_random(self, size: int) -> bytes: ...
    def create_key(self, key_id: str, version: int, replicable: bool) -> KeyInfo: ...
    def destroy_key(self, key_id: str, version: int) -> None: ...
    def list_keys(self) -> list[KeyInfo]: ...
    def key_info(self, key_id: str, version: int | None) -> KeyInfo: ...
    def export_key(self, key_id: str, version: int) -> bytes: ...
    def import_key(self, key_id: str, version: int, wrapped: bytes, *,
                   expected_kcv: str | None = None) -> KeyInfo: ...
    def describe(self) -> dict[str, Any]: ...


class HSMMember:
    """A member on a real PKCS#11 module. Opens lazily: a member that is down when the
    cluster opens is opened again by the first probe that finds it back."""

    def __init__(self, config: MemberConfig, *, allow_unsafe_keys: bool = False,
                 inline_recovery: bool = True) -> None:
        self.config = config
        self.name = config.name
        self.allow_unsafe_keys = allow_unsafe_keys
        self.inline_recovery = inline_recovery  # see SessionPool.inline_recovery
        self.module: Module | None = None
        self.keyring: Keyring | None = None

    def open(self) -> None:
        if self.keyring is not None:
            return
        module = Module.acquire(self.config.module, self.config.env)
        try:
            pool = SessionPool.acquire(module, self.config.token, self.config.pin,
                                       size=self.config.pool_size)
            pool.inline_recovery = self.inline_recovery
            try:
                keyring = Keyring(pool, allow_unsafe_keys=self.allow_unsafe_keys).open()
            except BaseException:
                pool.release()
                raise
        except BaseException:
            module.release()
            raise
        self.module, self.keyring = module, keyring
        # The data-key calls go straight to the keyring while it is open: two Python
        # frames less on every call (the methods below answer "not connected" otherwise).
        for name in _DIRECT:
            setattr(self, name, getattr(keyring, name))

    def close(self) -> None:
        keyring, module = self.keyring, self.module
        self.keyring = self.module = None
        for name in _DIRECT:
            self.__dict__.pop(name, None)
        try:
            if keyring is not None:
                keyring.pool.release()
        finally:
            if module is not None:
                module.release()

    def _ring(self) -> Keyring:
        ring = self.keyring
        if ring is None:
            raise HSMUnavailable(f"member {self.name} is not connected", reason=Reason.NOT_OPEN)
        return ring

    def ping(self) -> None:
        """Open if needed, repair if broken, then a cheap call that needs the token and the
        login."""
        if self.keyring is None:
            self.open()
        ring = self._ring()
        ring.pool.recover()
        ring.generate_random(1)

    def generate_data_key(self, key_id: str, context: Any) -> DataKey:
        return self._ring().generate_data_key(key_id, context)

    def wrap(self, key_id: str, plaintext: bytes | bytearray, context: Any) -> bytes:
        return self._ring().wrap(key_id, plaintext, context)

    def unwrap(self, blob: bytes, context: Any) -> bytearray:
        return self._ring().unwrap(blob, context)

    def encrypt_direct(self, key_id: str, plaintext: bytes | bytearray | memoryview,
                       context: Any) -> bytes:
        return self._ring().encrypt_direct(key_id, plaintext, context)

    def decrypt_direct(self, blob: bytes, context: Any) -> bytes:
        return self._ring().decrypt_direct(blob, context)

    def generate_random(self, size: int) -> bytes:
        return self._ring().generate_random(size)

    def create_key(self, key_id: str, version: int, replicable: bool) -> KeyInfo:
        return self._ring().create_key(key_id=key_id, version=version, replicable=replicable)

    def destroy_key(self, key_id: str, version: int) -> None:
        self._ring().destroy_key(key_id, version)

    def list_keys(self) -> list[KeyInfo]:
        return self._ring().list_keys()

    def key_info(self, key_id: str, version: int | None) -> KeyInfo:
        return self._ring().key_info(key_id, version)

    def export_key(self, key_id: str, version: int) -> bytes:
        return self._ring().export_key(key_id, version)

    def import_key(self, key_id: str, version: int, wrapped: bytes, *,
                   expected_kcv: str | None = None) -> KeyInfo:
        return self._ring().import_key(key_id, version, wrapped, expected_kcv=expected_kcv)

    def describe(self) -> dict[str, Any]:
        """Module, token and mechanisms, for ``hsm status``; connects if needed."""
        out: dict[str, Any] = {"module": self.config.module, "token_label": "",
                               "token_serial": "", "os_locking": False, "mechanisms": {},
                               "keys": 0}
        try:
            if self.keyring is None:
                self.open()
            ring = self._ring()
            assert self.module is not None
            out.update(token_label=ring.pool.token_label, token_serial=ring.pool.token_serial,
                       os_locking=self.module.os_locking,
                       mechanisms=ring.mechanisms.as_dict(), keys=len(ring.list_keys()))
        except HSMError as exc:
            out["error"] = str(exc)
        return out

    def __repr__(self) -> str:
        state = "open" if self.keyring is not None else "closed"
        return f"<HSMMember {self.name} {state}>"

