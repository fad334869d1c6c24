"""What each operation on a member is: the one line the failover policy reads.

The cluster does not know the operations themselves: it runs "a call on member X's keyring"
(:meth:`hsm.cluster.Cluster.call`), and the :class:`Operation` value that comes with the call
says what the policy needs to know. Adding an operation means three things: the keyring
method that does it on one HSM, one line here, and the method users call (``hsm.Client``).

- ``idempotent``: repeating the call on another member after a transient error (or a
  timeout) is safe: it reads, or it computes something any member computes alike, or (like
  ``IMPORT_KEY``) it leaves the member as it was when it already holds the result.
- ``changes_state``: the call changes what a member holds. A state change that is not
  idempotent (create, destroy) is never blindly repeated elsewhere.

The value (``op.value``) is the word metrics, logs and drills show.
"""

from __future__ import annotations

import enum

__all__ = ["Operation"]


class Operation(enum.Enum):
    """The calls a member serves."""

    #                   value                idempotent  changes state
    GENERATE_DATA_KEY = ("generate_data_key", True, False)
    WRAP = ("wrap", True, False)
    UNWRAP = ("unwrap", True, False)  # "does not verify" is checked on the other members
    ENCRYPT_DIRECT = ("encrypt_direct", True, False)
    DECRYPT_DIRECT = ("decrypt_direct", True, False)  # like UNWRAP
    RANDOM = ("generate_random", True, False)
    DESCRIBE = ("describe", True, False)
    LIST_KEYS = ("list_keys", True, False)
    KEY_INFO = ("key_info", True, False)
    EXPORT_KEY = ("export_key", True, False)
    IMPORT_KEY = ("import_key", True, True)  # a member that holds the key is left alone
    CREATE_KEY = ("create_key", False, True)
    DESTROY_KEY = ("destroy_key", False, True)
    PING = ("ping", True, False)

    # Members are singletons compared by identity: hash them so too (Enum's own __hash__ is
    # Python code, and every call looks its operation up in a dict of counters).
    __hash__ = object.__hash__

    _value_: str
    idempotent: bool
    changes_state: bool

    def __new__(cls, word: str, idempotent: bool, changes_state: bool) -> Operation:
        op = object.__new__(cls)
        op._value_ = word
        op.idempotent = idempotent
        op.changes_state = changes_state
        return op
