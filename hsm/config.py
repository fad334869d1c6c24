"""``hsm.toml``: the key stores (each a cluster of members), the metadata store and the
KMS defaults, as frozen dataclasses.

The top-level ``[cluster]`` and ``[[member]]`` are the default key store (``default``); more
key stores come as ``[[keystore]]`` tables, each with ``name``, ``mode``, ``quorum``,
``deadline_ms`` and its own ``[[keystore.member]]`` list. Member names are unique across
every key store. ``[store]`` names the metadata store (``url``, ``name``); ``[kms]`` the
account and principal used when a caller names none.

Found via an explicit path (``--config``), then ``$HSM_CONFIG``, then ``./hsm.toml``.
Relative paths inside the file (``module``, ``file:`` PINs) are read relative to the file.
A PIN never appears in the file: only where to get it (``env:VAR``, ``file:PATH``,
``prompt``).
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from hsm.errors import ConfigError, PinSourceError
from hsm.pkcs11.module import TokenSelector
from hsm.pkcs11.pin import PinSource

__all__ = [
    "DEFAULT_ACCOUNT",
    "DEFAULT_KEYSTORE",
    "ClusterConfig",
    "Config",
    "KMSConfig",
    "KeystoreConfig",
    "MemberConfig",
    "StoreConfig",
    "find_config_path",
    "load_config",
    "parse_config",
]

MODES = ("failover", "balanced")

#: The numbers a config may hold, and their bounds (inclusive). ``pool_size``: worker
#: sessions per member (each is an open session in the HSM; the module's own session limit
#: is checked when the pool opens). ``deadline_ms``: per call, 10 ms to 10 minutes.
#: ``quorum``: 1 to the number of members.
POOL_SIZE_RANGE = (1, 256)
DEADLINE_MS_RANGE = (10, 600_000)

#: The key store that top-level ``[cluster]`` / ``[[member]]`` make, and the account and
#: principal of a config that names none (``[kms]``).
DEFAULT_KEYSTORE = "default"
DEFAULT_ACCOUNT = "000000000000"
_ACCOUNT = re.compile(r"[0-9]{12}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


@dataclass(frozen=True)
class MemberConfig:
    """One HSM member: a module, a token on it, where its PIN comes from."""

    name: str
    module: str
    token: TokenSelector
    pin: PinSource
    env: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    pool_size: int = 8
    so_pin: PinSource | None = None  # the security officer's PIN: only for `hsm cluster init`


@dataclass(frozen=True)
class ClusterConfig:
    mode: str = "failover"
    quorum: int = 1
    deadline_ms: int = 2000


@dataclass(frozen=True)
class StoreConfig:
    """The KMS layer's metadata store. ``url``: SQLAlchemy URL (``None``: ``hsm.db`` beside
    the config); ``name``: the store's name in key ARNs (``arn:hsm:<name>:<account>:...``)."""

    url: str | None = None
    name: str = "local"


@dataclass(frozen=True)
class KeystoreConfig:
    """One key store: an HSM cluster of its own members (AWS: a custom key store)."""

    name: str
    cluster: ClusterConfig
    members: tuple[MemberConfig, ...]


@dataclass(frozen=True)
class KMSConfig:
    """Defaults of the KMS layer for single-user use: the account keys are created in and
    the principal calls are made as when the caller names none (the account's root)."""

    account: str = DEFAULT_ACCOUNT
    principal: str | None = None


@dataclass(frozen=True)
class Config:
    """A whole config. ``cluster`` and ``members`` are the default key store's (the
    top-level ``[cluster]`` and ``[[member]]``, or the first ``[[keystore]]``, whose name is
    ``default_keystore``); ``other_keystores`` the rest. ``keystores`` lists them all, the
    default first (built from ``cluster`` and ``members``, so ``dataclasses.replace`` of
    either is seen there too)."""

    cluster: ClusterConfig
    members: tuple[MemberConfig, ...]
    store: StoreConfig = StoreConfig()
    path: Path | None = None
    other_keystores: tuple[KeystoreConfig, ...] = ()
    kms: KMSConfig = KMSConfig()
    default_keystore: str = DEFAULT_KEYSTORE

    @property
    def keystores(self) -> tuple[KeystoreConfig, ...]:
        default = KeystoreConfig(self.default_keystore, self.cluster, self.members)
        return (default, *self.other_keystores)

    def member(self, name: str) -> MemberConfig:
        for member in self.members:
            if member.name == name:
                return member
        names = ", ".join(m.name for m in self.members)
        raise ConfigError(f"no member named {name!r}; members: {names}")

    def keystore(self, name: str | None = None) -> KeystoreConfig:
        """The key store ``name`` (``None``: the default one)."""
        if name is None:
            return self.keystores[0]
        for keystore in self.keystores:
            if keystore.name == name:
                return keystore
        names = ", ".join(k.name for k in self.keystores)
        raise ConfigError(f"no key store named {name!r}; key stores: {names}")


def find_config_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """``explicit``, else ``$HSM_CONFIG``, else ``./hsm.toml``; :class:`ConfigError` if none."""
    if explicit is not None:
        return Path(explicit)
    env = os.environ.get("HSM_CONFIG")
    if env:
        return Path(env)
    default = Path("hsm.toml")
    if default.exists():
        return default
    raise ConfigError("no configuration: pass --config, set HSM_CONFIG or create ./hsm.toml")


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Read and validate a config file; every problem is a :class:`ConfigError`."""
    where = find_config_path(path)
    try:
        data = tomllib.loads(where.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {where} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {where} can't be read: {type(exc).__name__}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {where} is not valid TOML: {exc}") from None
    return parse_config(data, path=where)


def _get(table: Mapping[str, Any], key: str, kind: type, where: str, default: Any = None) -> Any:
    value = table.get(key, default)
    if value is None or (kind is int and isinstance(value, bool)) or not isinstance(value, kind):
        if value is None and default is None:
            raise ConfigError(f"{where}: '{key}' is required")
        raise ConfigError(f"{where}: '{key}' must be {_KIND_NAMES.get(kind, kind.__name__)}")
    return value


_KIND_NAMES = {int: "an integer", str: "a string"}


def _number(table: Mapping[str, Any], key: str, where: str, default: int,
            bounds: tuple[int, int]) -> int:
    """An integer ``key`` of ``table`` (``default`` if absent) within ``bounds``."""
    low, high = bounds
    value: int = _get(table, key, int, where, default)
    if not low <= value <= high:
        raise ConfigError(f"{where}: {key} = {value} is out of range: allowed {low} to {high}")
    return value


def parse_config(data: Mapping[str, Any], *, path: Path | None = None) -> Config:
    """Build a :class:`Config` from parsed TOML (``path`` anchors relative paths)."""
    name = str(path) if path else "config"
    base = path.parent.resolve() if path else Path.cwd()
    unknown = set(data) - {"cluster", "member", "store", "keystore", "kms"}
    if unknown:
        raise ConfigError(f"{name}: unknown section(s) {', '.join(sorted(unknown))}")
    keystores: list[KeystoreConfig] = []
    if data.get("member") is not None or data.get("keystore") is None:
        keystores.append(_keystore(data, DEFAULT_KEYSTORE, name, base, top=True))
    elif "cluster" in data:
        raise ConfigError(f"{name}: [cluster] goes with top-level [[member]]; a [[keystore]] "
                          "has its own mode, quorum and deadline_ms")
    raw_stores = data.get("keystore", [])
    if not isinstance(raw_stores, list):
        raise ConfigError(f"{name}: keystore must be an array of tables ([[keystore]])")
    for index, table in enumerate(raw_stores):
        if not isinstance(table, Mapping):
            raise ConfigError(f"{name} [[keystore]] #{index + 1}: must be a table")
        store_name = _get(table, "name", str, f"{name} [[keystore]] #{index + 1}")
        if not _NAME.fullmatch(store_name):
            raise ConfigError(f"{name} [[keystore]] #{index + 1}: name {store_name!r} must be "
                              "1-64 letters, digits, '_', '.', '-' (starting with a letter "
                              "or digit)")
        keystores.append(_keystore(table, store_name, name, base, top=False))
    store_names = [k.name for k in keystores]
    if len(set(store_names)) != len(store_names):
        raise ConfigError(f"{name}: key store names must be unique")
    member_names = [m.name for k in keystores for m in k.members]
    if len(set(member_names)) != len(member_names):
        raise ConfigError(f"{name}: member names must be unique (across key stores too)")
    default = keystores[0]
    return Config(default.cluster, default.members, _store(data, name), path,
                  tuple(keystores[1:]), _kms(data, name), default.name)


def _keystore(table: Mapping[str, Any], store: str, name: str, base: Path, *,
              top: bool) -> KeystoreConfig:
    """A key store: top-level ``[cluster]`` + ``[[member]]``, or one ``[[keystore]]`` with
    ``mode``, ``quorum``, ``deadline_ms`` and ``[[keystore.member]]``."""
    if not top:
        unknown = set(table) - {"name", "mode", "quorum", "deadline_ms", "member"}
        if unknown:
            raise ConfigError(f"{name} keystore {store!r}: unknown key(s) "
                              f"{', '.join(sorted(unknown))}")
    raw_members = table.get("member")
    if not isinstance(raw_members, list) or not raw_members:
        if top:
            raise ConfigError(f"{name}: at least one [[member]] is required")
        raise ConfigError(f"{name} keystore {store!r}: at least one [[keystore.member]] is "
                          "required")
    members = tuple(_member(m, i, name, base) for i, m in enumerate(raw_members))
    names = [m.name for m in members]
    if len(set(names)) != len(names):
        raise ConfigError(f"{name}: member names must be unique")

    cluster_table = table.get("cluster", {}) if top else table
    if not isinstance(cluster_table, Mapping):
        raise ConfigError(f"{name}: [cluster] must be a table")
    where = f"{name} [cluster]" if top else f"{name} keystore {store!r}"
    mode = _get(cluster_table, "mode", str, where, "failover")
    if mode not in MODES:
        raise ConfigError(f"{where}: mode must be one of {', '.join(MODES)}")
    quorum = _get(cluster_table, "quorum", int, where, min(2, len(members)))
    if not 1 <= quorum <= len(members):
        raise ConfigError(f"{where}: quorum = {quorum} is out of range: allowed 1 to the "
                          f"number of members ({len(members)})")
    deadline = _number(cluster_table, "deadline_ms", where, 2000, DEADLINE_MS_RANGE)
    return KeystoreConfig(store, ClusterConfig(mode, quorum, deadline), members)


def _store(data: Mapping[str, Any], name: str) -> StoreConfig:
    table = data.get("store", {})
    if not isinstance(table, Mapping):
        raise ConfigError(f"{name}: [store] must be a table")
    unknown = set(table) - {"url", "name"}
    if unknown:
        raise ConfigError(f"{name} [store]: unknown key(s) {', '.join(sorted(unknown))}")
    url = table.get("url")
    if url is not None and not isinstance(url, str):
        raise ConfigError(f"{name} [store]: 'url' must be a string")
    store_name = _get(table, "name", str, f"{name} [store]", "local")
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,62}", store_name):
        raise ConfigError(f"{name} [store]: name {store_name!r} must be lower-case letters, "
                          "digits and '-' (it goes into key ARNs)")
    return StoreConfig(url, store_name)


def _kms(data: Mapping[str, Any], name: str) -> KMSConfig:
    table = data.get("kms", {})
    if not isinstance(table, Mapping):
        raise ConfigError(f"{name}: [kms] must be a table")
    unknown = set(table) - {"account", "principal"}
    if unknown:
        raise ConfigError(f"{name} [kms]: unknown key(s) {', '.join(sorted(unknown))}")
    account = _get(table, "account", str, f"{name} [kms]", DEFAULT_ACCOUNT)
    if not _ACCOUNT.fullmatch(account):
        raise ConfigError(f"{name} [kms]: account {account!r} must be 12 digits")
    principal = table.get("principal")
    if principal is not None and not isinstance(principal, str):
        raise ConfigError(f"{name} [kms]: 'principal' must be a string (a principal ARN)")
    return KMSConfig(account, principal)


def _pin_source(table: Mapping[str, Any], key: str, where: str, base: Path,
                prompt: str) -> PinSource:
    """A PIN source from the config; a ``file:`` path is read relative to the config."""
    try:
        source = PinSource.parse(_get(table, key, str, where), prompt_text=prompt)
    except PinSourceError as exc:
        raise ConfigError(f"{where}: {key}: {exc}") from None
    if source.kind == "file":
        source = PinSource("file", str(base / Path(source.where).expanduser()), prompt)
    return source


def _member(table: Any, index: int, name: str, base: Path) -> MemberConfig:
    where = f"{name} [[member]] #{index + 1}"
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where}: must be a table")
    unknown = set(table) - {"name", "module", "token", "serial", "pin", "so_pin", "env",
                            "pool_size"}
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    member_name = _get(table, "name", str, where)
    where = f"{name} member {member_name!r}"
    module = str(base / Path(_get(table, "module", str, where)).expanduser())
    token, serial = table.get("token"), table.get("serial")
    if (token is None) == (serial is None):
        raise ConfigError(f"{where}: give exactly one of 'token' (label) or 'serial'")
    if not isinstance(token if token is not None else serial, str):
        raise ConfigError(f"{where}: 'token' and 'serial' are strings")
    selector = TokenSelector(label=token, serial=serial)
    pin = _pin_source(table, "pin", where, base, f"PIN for {member_name}: ")
    so_pin = (_pin_source(table, "so_pin", where, base, f"SO PIN for {member_name}: ")
              if table.get("so_pin") is not None else None)
    env = table.get("env", {})
    if not isinstance(env, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in env.items()
    ):
        raise ConfigError(f"{where}: 'env' must be a table of strings")
    pool_size = _number(table, "pool_size", where, 8, POOL_SIZE_RANGE)
    return MemberConfig(member_name, module, selector, pin, MappingProxyType(dict(env)),
                        pool_size, so_pin)
