"""Keys on one HSM: master keys, sealed data keys, key-object wrap/unwrap, replication.

Hazmat: applications use :func:`hsm.open`; this layer is what the client and the cluster
are built from. It imports only downward (:mod:`hsm.errors`, :mod:`hsm.context`,
:mod:`hsm.pkcs11`) and speaks to the HSM only through the edge's typed values.
"""

from hsm.keys.blob import SealedBlob, parse_blob
from hsm.keys.keyring import DataKey, Keyring
from hsm.keys.keywrap import (
    WrapMechanism,
    import_wrapped_key,
    unwrap_key_object,
    wrap_key_object,
)
from hsm.keys.master import KeyInfo

__all__ = [
    "DataKey",
    "KeyInfo",
    "Keyring",
    "SealedBlob",
    "WrapMechanism",
    "import_wrapped_key",
    "parse_blob",
    "unwrap_key_object",
    "wrap_key_object",
]
