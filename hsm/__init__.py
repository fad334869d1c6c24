"""hsm: master keys in hardware security modules, used the way a cloud KMS uses them.

::

    import hsm
    with hsm.open("hsm.toml") as client:
        key = client.create_key()
        dk = client.generate_data_key(key.key_id, context={"tenant": "acme"})
        ...
        dk.wipe()

Everything users need is importable from here; the subpackages are building blocks.
"""

from hsm.client import Client, MemberStatus, open
from hsm.config import Config, load_config
from hsm.envelope.cache import CacheConfig
from hsm.errors import (
    ClusterUnavailable,
    ConfigError,
    ContextMismatch,
    HSMError,
    HSMUnavailable,
    InvalidCiphertext,
    InvalidContext,
    InvalidInput,
    KeyNotFound,
    Kind,
    MechanismUnsupported,
    ModuleLoadError,
    OperationFailed,
    PinError,
    PinIncorrect,
    PinSourceError,
    QuorumNotReached,
    Reason,
    ReplicationError,
    TokenNotFound,
    UnsafeKey,
)
from hsm.keys import DataKey, KeyInfo

__version__ = "0.1.0"

__all__ = [
    "CacheConfig",
    "Client",
    "ClusterUnavailable",
    "Config",
    "ConfigError",
    "ContextMismatch",
    "DataKey",
    "HSMError",
    "HSMUnavailable",
    "InvalidCiphertext",
    "InvalidContext",
    "InvalidInput",
    "KeyInfo",
    "KeyNotFound",
    "Kind",
    "MechanismUnsupported",
    "MemberStatus",
    "ModuleLoadError",
    "OperationFailed",
    "PinError",
    "PinIncorrect",
    "PinSourceError",
    "QuorumNotReached",
    "Reason",
    "ReplicationError",
    "TokenNotFound",
    "UnsafeKey",
    "__version__",
    "load_config",
    "open",
]
