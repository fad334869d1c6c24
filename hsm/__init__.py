"""hsm: master keys in hardware security modules, used the way a cloud KMS uses them.

::

    import hsm
    with hsm.open("hsm.toml") as client:
        key = client.create_key()
        dk = client.generate_data_key(key.key_id, context={"tenant": "acme"})
        ...
        dk.wipe()

Everything users need is importable from here; the subpackages are building blocks. Names
other than the errors are imported when first used (PEP 562): ``import hsm`` loads no
PKCS#11 binding, no client and no metrics library, so that what imports it for little (the
pytest plugin, the command line's help) starts fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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
)  # the bottom layer: it imports nothing

if TYPE_CHECKING:
    from hsm.client import Client, MemberStatus, open
    from hsm.config import Config, load_config
    from hsm.envelope.cache import CacheConfig
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

# Where each name imported on first use lives.
_HOMES = {
    "CacheConfig": "hsm.envelope.cache",
    "Client": "hsm.client",
    "Config": "hsm.config",
    "DataKey": "hsm.keys",
    "KeyInfo": "hsm.keys",
    "MemberStatus": "hsm.client",
    "load_config": "hsm.config",
    "open": "hsm.client",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # found once; later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
