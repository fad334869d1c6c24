"""PKCS#11 edge: modules, tokens, PINs, sessions, mechanisms, error translation.

This is the only package that imports ``pkcs11``. Hazmat: these are the building blocks
under :mod:`hsm`'s client; applications should not need them.
"""

from hsm.pkcs11.mechanisms import Mechanisms, probe
from hsm.pkcs11.module import Module, TokenSelector
from hsm.pkcs11.pin import PinSource, Secret
from hsm.pkcs11.pool import Lease, SessionPool
from hsm.pkcs11.translate import Recovery, recovery_for, translate_error, translated

__all__ = [
    "Lease",
    "Mechanisms",
    "Module",
    "PinSource",
    "Recovery",
    "Secret",
    "SessionPool",
    "TokenSelector",
    "probe",
    "recovery_for",
    "translate_error",
    "translated",
]
