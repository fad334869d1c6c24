"""The calls made on a session: finding, generating and creating secret keys, random bytes.

:class:`~hsm.pkcs11.lease.Lease` and the security officer's session
(:class:`~hsm.pkcs11.officer.SecurityOfficer`) wrap them; every python-pkcs11 error goes
through :mod:`hsm.pkcs11.translate`. The key objects returned are
:class:`~hsm.pkcs11.objects.SecretKey`.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Mapping
from typing import Any

from pkcs11 import Attribute, ObjectClass
from pkcs11.exceptions import PKCS11Error

from hsm.pkcs11.objects import GENERATE, KeyTemplate, SecretKey, p11_flags, p11_template
from hsm.pkcs11.translate import translated

__all__ = ["create_key", "find_keys", "generate_key", "random_bytes"]

# python-pkcs11's search object (its extension module declares no types for it).
_SearchIter: Any = importlib.import_module("pkcs11._pkcs11").SearchIter
_SEARCH_BATCH = 64


def find_keys(session: Any, label: str | None = None, *, operation: str = "find key",
              ) -> list[SecretKey]:
    """Every secret key of ``session``'s token (labelled ``label`` if given) the session
    can see. An empty result may also mean a lost token: ask the token to tell them apart."""
    query: dict[Attribute, Any] = {Attribute.CLASS: ObjectClass.SECRET_KEY}
    if label is not None:
        query[Attribute.LABEL] = label
    with translated(operation):
        return [SecretKey(obj) for obj in _search(session, query)]


def _search(session: Any, query: dict[Attribute, Any]) -> list[Any]:
    """Every object ``query`` matches, the search finished here whatever happens.

    python-pkcs11's ``get_objects`` leaves a search whose ``C_FindObjectsInit`` failed
    marked active, holding the session's operation lock, until the garbage collector runs
    its finalizer: that calls ``C_FindObjectsFinal``, which fails again under a device fault
    and can only be printed ("Exception ignored in ... OperationContext.__del__"), at some
    random later moment, from whatever thread. So the search object is driven here and, if
    anything fails, finished at once (its final call's error ignored: the first error is
    the one raised).
    """
    search = _SearchIter(session, query, _SEARCH_BATCH)
    try:
        with search:
            return [obj for batch in search for obj in batch]
    except BaseException:
        with contextlib.suppress(PKCS11Error):
            search._finalize(False)  # C_FindObjectsFinal if still active; unlock the session
        raise


def generate_key(session: Any, template: KeyTemplate, size: int, *,
                 operation: str = "create key") -> SecretKey:
    """A new secret key of ``size`` bytes generated inside the HSM with exactly
    ``template``'s attributes."""
    attrs = p11_template(template)
    mechanism = GENERATE[template.key_type]
    with translated(operation):
        obj = session.generate_key(
            template.key_type.value, size * 8, label=template.label or None,
            id=template.cka_id or None, store=template.token,
            capabilities=p11_flags(template.capabilities), mechanism=mechanism,
            template=attrs,
        )
    return SecretKey(obj)


def create_key(session: Any, template: KeyTemplate, value: bytes | bytearray, *,
               extra: Mapping[Attribute, Any] | None = None,
               operation: str = "create key") -> SecretKey:
    """A new secret key holding ``value`` (``C_CreateObject``) with exactly ``template``'s
    attributes (and ``extra``, for the edge's own attributes such as an unwrap template).
    python-pkcs11 copies ``value`` into memory of its own: wiping the caller's copy is all
    this process can do."""
    attrs = p11_template(template)
    attrs[Attribute.CLASS] = ObjectClass.SECRET_KEY
    attrs[Attribute.KEY_TYPE] = template.key_type.value
    attrs[Attribute.VALUE] = bytes(value)
    if extra:
        attrs.update(extra)
    with translated(operation):
        return SecretKey(session.create_object(attrs))


def random_bytes(session: Any, size: int, *, operation: str = "generate random") -> bytes:
    """``size`` bytes from the token's random number generator."""
    with translated(operation):
        return bytes(session.generate_random(size * 8))  # python-pkcs11 takes bits
