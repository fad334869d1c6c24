"""``hsm cluster init``: the security officers' ceremony that gives every member the same
trusted cluster wrapping key, under which replicable master keys move between members.

All or nothing, in three steps:

1. log in as the security officer (SO) on *every* member (each member's ``so_pin``); a
   member that is down, or whose SO PIN is refused, stops the ceremony before anything
   changes;
2. look at what each member holds under :data:`~hsm.keys.replication.CLUSTER_WRAP_LABEL`:
   members that already hold a wrapping key must agree (same KCV) -- a member that holds
   another one is named and nothing is changed, since the ceremony never replaces a key;
3. create the key on the members that lack it, each tested in its HSM
   (:meth:`~hsm.keys.replication.OfficerSession.create_wrapping_key`). If one fails, the keys
   created in this run are destroyed again.

The key material: 32 bytes from ``os.urandom`` XORed with 32 bytes from the first member's
own RNG (so it is as unpredictable as the better of the two), held in one ``bytearray`` that
is zeroed when the ceremony ends, whatever happens. It is never written anywhere and never
kept: a member added later can't get the same key from the ceremony (see
docs/CLUSTER-KEYS.md for the ways to add one). ``material`` may be given instead (tests, or
a custodian who keeps the material split offline); a caller's ``bytes`` can't be wiped here.

Run it before any client opens a member in this process: PKCS#11 login is per token per
application, and the SO can't log in next to a user login.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hsm.config import Config, MemberConfig
from hsm.errors import ConfigError, HSMError, InvalidInput, OperationFailed, Reason
from hsm.keys.replication import (
    CLUSTER_WRAP_LABEL,
    MATERIAL_BYTES,
    OfficerSession,
    material_kcv,
)
from hsm.pkcs11 import Module

__all__ = ["CeremonyReport", "MemberCeremony", "init_cluster"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MemberCeremony:
    """What the ceremony found or did on one member."""

    name: str
    kcv: str
    created: bool  # False: the member already held this wrapping key

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kcv": self.kcv, "created": self.created}


@dataclass(frozen=True)
class CeremonyReport:
    """Every member's outcome, and the KCV they all share."""

    members: tuple[MemberCeremony, ...]
    kcv: str

    def as_dict(self) -> dict[str, Any]:
        return {"members": [m.as_dict() for m in self.members], "kcv": self.kcv}


def init_cluster(config: Config, *, material: bytes | bytearray | None = None,
                 label: str = CLUSTER_WRAP_LABEL) -> CeremonyReport:
    """Establish the trusted cluster wrapping key on every member of ``config``.

    Idempotent: members that already hold the same key are reported ``created=False``.
    Raises :class:`ConfigError` when a member has no ``so_pin``; :class:`OperationFailed`
    naming the member(s) when members hold different wrapping keys, or when some hold one
    and others don't and no ``material`` is given; any member's error, with its name in
    front, after undoing what this run created.
    """
    lacking = [m.name for m in config.members if m.so_pin is None]
    if lacking:
        where = config.path or "the config"
        raise ConfigError(
            f"{where}: member(s) {', '.join(lacking)} have no so_pin; the ceremony logs in as "
            "each member's security officer (so_pin = \"env:VAR\", \"file:PATH\" or "
            "\"prompt\")"
        )
    secret: bytearray | None = None
    if material is not None:
        if not isinstance(material, bytes | bytearray) or len(material) != MATERIAL_BYTES:
            raise InvalidInput(f"the wrapping key material must be {MATERIAL_BYTES} bytes")
        secret = bytearray(material)
    modules: list[Module] = []
    officers: list[tuple[MemberConfig, OfficerSession]] = []
    created: list[tuple[MemberConfig, OfficerSession, str]] = []
    try:
        for member in config.members:  # 1. every SO login before any change
            officers.append((member, _login(member, modules)))
        held = {}  # 2. what each member holds now
        for member, officer in officers:
            with _named(member):
                held[member.name] = officer.wrapping_key_kcv(label)
        given = material_kcv(secret) if secret is not None else None
        reference, missing = _plan([m.name for m in config.members], held, given, label)
        if missing and secret is None:
            secret = _fresh_material(officers[0])
            reference = material_kcv(secret)
        for member, officer in officers:  # 3. create where missing, test where present
            with _named(member):
                if member.name in missing:
                    assert secret is not None
                    kcv = officer.create_wrapping_key(secret, label)
                    created.append((member, officer, kcv))
                elif secret is not None:
                    officer.verify_wrapping_key(secret, label)
        rows = tuple(
            MemberCeremony(m.name, _kcv_of(m.name, held, created), m.name in missing)
            for m in config.members
        )
        odd = [row.name for row in rows if row.kcv != reference]
        if odd or reference is None:
            raise OperationFailed(
                f"member(s) {', '.join(odd)} ended the ceremony with another wrapping key "
                f"than kcv {reference}", reason=Reason.WRAPPING_KEY_MISMATCH,
            )
        report = CeremonyReport(rows, reference)
    except BaseException:
        _roll_back(created, label)
        raise
    finally:
        if secret is not None:
            secret[:] = bytes(len(secret))
        for _member, officer in officers:
            officer.close()
        for module in modules:
            module.release()
    log.info("cluster wrapping key %r (kcv %s): created on %s, already on %s", label,
             report.kcv, ", ".join(r.name for r in rows if r.created) or "none",
             ", ".join(r.name for r in rows if not r.created) or "none")
    return report


# -- steps ----------------------------------------------------------------------------------


class _named:
    """Re-raise a member's :class:`HSMError` with the member's name in front (same class)."""

    def __init__(self, member: MemberConfig) -> None:
        self.member = member

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if isinstance(exc, HSMError) and self.member.name not in exc.message:
            message = f"member {self.member.name}: {exc.message}"
            try:
                renamed = type(exc)(message, reason=exc.reason)
            except TypeError:  # a subclass with other arguments: keep it as it is
                return
            raise renamed from exc


def _login(member: MemberConfig, modules: list[Module]) -> OfficerSession:
    """Load the member's module (recorded in ``modules`` for release) and log its SO in."""
    assert member.so_pin is not None
    with _named(member):
        module = Module.acquire(member.module, member.env)
        modules.append(module)
        so_pin = member.so_pin.read()
        return OfficerSession(module, member.token, so_pin, name=member.name).open()


def _plan(names: Sequence[str], held: dict[str, str | None], given: str | None,
          label: str) -> tuple[str | None, list[str]]:
    """``(the KCV every member must end with, members to create the key on)``.

    The reference is the given material's KCV, else the KCV most members hold (the first
    such member in config order breaks a tie), else None (a fresh key is made).
    """
    present = {name: kcv for name, kcv in held.items() if kcv is not None}
    missing = [name for name in names if held.get(name) is None]
    reference = given
    if reference is None and present:
        counts = Counter(present.values())
        top = max(counts.values())
        reference = next(present[n] for n in names if n in present and counts[present[n]] == top)
    odd = [name for name in names if name in present and present[name] != reference]
    if odd:
        against = (f"the given material's kcv {given}" if given is not None else
                   f"kcv {reference} on " + ", ".join(n for n in names
                                                     if present.get(n) == reference))
        differs = ", ".join(f"{n} (kcv {present[n]})" for n in odd)
        raise OperationFailed(
            f"member(s) {differs} hold another cluster wrapping key {label!r} than "
            f"{against}; the ceremony never replaces one and changed nothing: have the "
            "security officer destroy it on those members, then run it again",
            reason=Reason.WRAPPING_KEY_MISMATCH,
        )
    if present and missing and given is None:
        holders = ", ".join(n for n in names if n in present)
        raise OperationFailed(
            f"member(s) {holders} hold the cluster wrapping key (kcv {reference}) but "
            f"{', '.join(missing)} do(es) not, and the ceremony never keeps its key material; "
            "nothing was changed. Clone a member's token for the new one, or have the "
            "security officers destroy the wrapping key on every member and run the ceremony "
            "again (master keys are not affected)", reason=Reason.WRAPPING_KEY_PARTIAL,
        )
    return reference, missing


def _fresh_material(first: tuple[MemberConfig, OfficerSession]) -> bytearray:
    """32 bytes: os.urandom XOR the first member's RNG."""
    member, officer = first
    secret = bytearray(os.urandom(MATERIAL_BYTES))
    with _named(member):
        other = officer.random(MATERIAL_BYTES)
    try:
        for i in range(MATERIAL_BYTES):
            secret[i] ^= other[i]
    finally:
        other[:] = bytes(len(other))
    return secret


def _kcv_of(name: str, held: dict[str, str | None],
            created: list[tuple[MemberConfig, OfficerSession, str]]) -> str:
    for member, _officer, kcv in created:
        if member.name == name:
            return kcv
    return held.get(name) or ""


def _roll_back(created: list[tuple[MemberConfig, OfficerSession, str]], label: str) -> None:
    """Destroy the wrapping keys this run created (the ceremony failed somewhere)."""
    for member, officer, kcv in created:
        try:
            officer.destroy_wrapping_key(kcv, label)
        except HSMError as exc:
            log.error("ceremony rollback: member %s keeps the wrapping key %r created in the "
                      "failed run (kcv %s): %s; its security officer must destroy it",
                      member.name, label, kcv, exc)
