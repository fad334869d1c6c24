"""A cluster member: one HSM as the cluster sees it, and the real implementation.

The seam between the cluster and a member is narrow: a :class:`Member` opens, closes,
answers a ping, and hands out its keyring; the cluster runs a call on that keyring
(:meth:`hsm.cluster.Cluster.call`), and the :class:`~hsm.cluster.operations.Operation` that
comes with the call tells the failover policy what kind of call it is. The cluster itself
calls only what placing and re-admitting keys needs (:class:`ClusterKeyring`); every other
operation is the caller's function on the keyring, typed by the keyring's own class.

:class:`HSMMember` is a member on a PKCS#11 module and token (module, session pool,
:class:`hsm.keys.Keyring`); :class:`hsm.testing.fakes.FakeMember` is one in memory, with a
fake keyring, for testing the cluster logic.
"""

from __future__ import annotations

from typing import Protocol, TypeVar

from hsm.config import MemberConfig
from hsm.errors import HSMUnavailable, Reason
from hsm.keys import KeyInfo, Keyring
from hsm.pkcs11 import Module, SessionPool

__all__ = ["ClusterKeyring", "HSMMember", "Member"]


class ClusterKeyring(Protocol):
    """What the cluster itself calls on a member's keyring: placing a key on a quorum of
    members, copying it to members that missed it, destroying it, listing what a member
    holds. Every method may raise :class:`hsm.HSMError`."""

    def create_key(self, *, key_id: str | None = None, version: int = 1,
                   replicable: bool = False) -> KeyInfo: ...
    def destroy_key(self, key_id: str, version: int) -> None: ...
    def list_keys(self) -> list[KeyInfo]: ...
    def export_key(self, key_id: str, version: int) -> bytes: ...
    def import_key(self, key_id: str, version: int, wrapped: bytes, *,
                   expected_kcv: str | None = None) -> KeyInfo: ...
    def weak_keys(self) -> list[tuple[KeyInfo, list[str]]]:
        """Key versions whose attributes grant more than the master-key template, each with
        what is wrong (``hsm cluster verify`` reports them)."""
        ...


R = TypeVar("R", bound=ClusterKeyring, covariant=True)


class Member(Protocol[R]):
    """One HSM as the cluster sees it. Every method may raise :class:`hsm.HSMError`."""

    @property
    def name(self) -> str: ...

    @property
    def keyring(self) -> R:
        """The keyring of the open member; :class:`hsm.HSMUnavailable` (``not_open``) while
        it is not connected."""
        ...

    def open(self) -> None: ...
    def close(self) -> None: ...
    def ping(self) -> None:
        """Open if needed, repair if broken, then a cheap call that needs the token."""
        ...


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
        self._keyring: Keyring | None = None

    @property
    def keyring(self) -> Keyring:
        ring = self._keyring
        if ring is None:
            raise HSMUnavailable(f"member {self.name} is not connected", reason=Reason.NOT_OPEN)
        return ring

    @property
    def connected(self) -> bool:
        return self._keyring is not None

    def open(self) -> None:
        if self._keyring is not None:
            return
        module = Module.acquire(self.config.module, self.config.env)
        try:
            pool = SessionPool.acquire(module, self.config.token, self.config.pin,
                                       size=self.config.pool_size, name=self.name)
            pool.inline_recovery = self.inline_recovery
            try:
                keyring = Keyring(pool, allow_unsafe_keys=self.allow_unsafe_keys).open()
            except BaseException:
                pool.release()
                raise
        except BaseException:
            module.release()
            raise
        self.module, self._keyring = module, keyring

    def close(self) -> None:
        keyring, module = self._keyring, self.module
        self._keyring = self.module = None
        try:
            if keyring is not None:
                keyring.pool.release()
        finally:
            if module is not None:
                module.release()

    def ping(self) -> None:
        if self._keyring is None:
            self.open()
        ring = self.keyring
        ring.pool.recover()
        ring.generate_random(1)
        # SoftHSM answers random numbers even while its token store is lost: ask the token.
        with ring.pool.session() as lease:
            ring.pool.check_token(lease)

    def __repr__(self) -> str:
        state = "open" if self._keyring is not None else "closed"
        return f"<HSMMember {self.name} {state}>"
