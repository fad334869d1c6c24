"""PKCS#11 edge: modules, tokens, PINs, sessions, typed key objects, the security officer's
session, mechanisms, error translation.

This is the only package that imports ``pkcs11``. The layers above speak in its typed
values (:mod:`hsm.pkcs11.objects`: key templates, attributes, key objects) and its errors
(every python-pkcs11 exception goes through :mod:`hsm.pkcs11.translate`). Hazmat: these are
the building blocks under :mod:`hsm`'s client; applications should not need them.
"""

from hsm.pkcs11.lease import Lease
from hsm.pkcs11.mechanisms import Mechanisms, probe
from hsm.pkcs11.module import Module, TokenSelector
from hsm.pkcs11.objects import (
    AES_GCM,
    AES_KEY_WRAP,
    Attr,
    AttrValue,
    Capability,
    KeyClass,
    KeyTemplate,
    KeyType,
    SecretKey,
)
from hsm.pkcs11.officer import SecurityOfficer
from hsm.pkcs11.pin import PinSource, Secret
from hsm.pkcs11.pool import SessionPool
from hsm.pkcs11.translate import Recovery, recovery_for, translate_error, translated

__all__ = [
    "AES_GCM",
    "AES_KEY_WRAP",
    "Attr",
    "AttrValue",
    "Capability",
    "KeyClass",
    "KeyTemplate",
    "KeyType",
    "Lease",
    "Mechanisms",
    "Module",
    "PinSource",
    "Recovery",
    "Secret",
    "SecretKey",
    "SecurityOfficer",
    "SessionPool",
    "TokenSelector",
    "probe",
    "recovery_for",
    "translate_error",
    "translated",
]
