"""The data-key cache: reuse a data key for several messages, within limits.

Off by default. A client made with ``cache=CacheConfig(max_age=...)`` keeps, per master key
id and encryption context, the data key it last got from the HSM and encrypts further
messages under it until the key is ``max_age`` seconds old, has encrypted ``max_messages``
messages or would pass ``max_bytes`` bytes (the AWS Encryption SDK's caching materials
manager semantics). On decryption it keeps the plaintext of a sealed data key it opened,
per sealed key and context, so that the next message carrying the same sealed key needs
no unwrap. ``docs/CACHE.md`` explains the security trade-off.

Every key handed out is a copy the caller owns (and wipes after use): an eviction in
another thread can never zero a key that is still in use. A key leaving the cache (age,
limits, capacity, :meth:`DataKeyCache.clear`, the client's ``close``) is zeroed in place.

Thread-safe: one lock guards the entries only; it is never held across an HSM call. Two
threads that miss on the same entry at once both call the HSM; the first key stored
stays, the other is used for its one message and not cached.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from hsm.errors import InvalidInput
from hsm.keys import DataKey

__all__ = ["MAX_BYTES", "MAX_MESSAGES", "CacheConfig", "DataKeyCache"]

MAX_MESSAGES = 2**32  # the Encryption SDK's bound on max_messages_encrypted
MAX_BYTES = 2**63 - 1  # ... and on max_bytes_encrypted

ENCRYPT, DECRYPT = "encrypt", "decrypt"
#: Why an entry left the cache (the ``reason`` label of the evictions counter).
REASONS = ("age", "messages", "bytes", "capacity", "clear")


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class CacheConfig:
    """Limits of the data-key cache.

    ``max_age`` (seconds, required, > 0): a cached key is used until it is this old.
    ``max_messages`` (1 .. 2**32): messages one data key may encrypt (or, on the decrypt
    side, open). ``max_bytes`` (0 .. 2**63-1): plaintext bytes one data key may encrypt.
    ``capacity``: entries kept in all (least recently used leave first).
    """

    max_age: float
    max_messages: int = MAX_MESSAGES
    max_bytes: int = MAX_BYTES
    capacity: int = 1000

    def __post_init__(self) -> None:
        age = self.max_age
        if not isinstance(age, int | float) or isinstance(age, bool) \
                or not math.isfinite(age) or age <= 0:
            raise InvalidInput(f"cache max_age must be a number of seconds > 0, not {age!r}")
        if not _whole(self.max_messages) or not 1 <= self.max_messages <= MAX_MESSAGES:
            raise InvalidInput(f"cache max_messages must be an integer from 1 to {MAX_MESSAGES}")
        if not _whole(self.max_bytes) or not 0 <= self.max_bytes <= MAX_BYTES:
            raise InvalidInput(f"cache max_bytes must be an integer from 0 to {MAX_BYTES}")
        if not _whole(self.capacity) or self.capacity < 1:
            raise InvalidInput("cache capacity must be an integer >= 1")


class _Entry:
    """One cached key: its plaintext (zeroed on eviction) and what it has done so far."""

    __slots__ = ("created", "data_key", "messages", "nbytes", "plaintext", "use")

    def __init__(self, use: str, plaintext: bytearray, data_key: DataKey | None,
                 created: float, nbytes: int) -> None:
        self.use = use
        self.plaintext = plaintext
        self.data_key = data_key
        self.created = created
        self.messages = 1
        self.nbytes = nbytes

    def wipe(self) -> None:
        self.plaintext[:] = bytes(len(self.plaintext))


_Key = tuple[str, object, bytes]  # (use, key id or sealed key, encoded context)


class DataKeyCache:
    """Data keys by (master key id, context) for encryption and plaintext keys by (sealed
    key, context) for decryption; LRU within ``config.capacity``.

    ``clock`` (monotonic seconds) is injected for tests. Metrics go to ``registry`` (the
    client's ``client.metrics.registry``): ``hsm_datakey_cache_hits_total``,
    ``hsm_datakey_cache_misses_total`` (label ``use``: encrypt, decrypt),
    ``hsm_datakey_cache_evictions_total`` (``use``, ``reason``: age, messages, bytes,
    capacity, clear) and ``hsm_datakey_cache_bypasses_total`` (``reason``: unknown_size,
    too_large: encryptions that did not use the cache at all).
    """

    def __init__(self, config: CacheConfig, registry: CollectorRegistry | None = None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not isinstance(config, CacheConfig):
            raise InvalidInput(f"cache must be a CacheConfig, not {type(config).__name__}")
        self.config = config
        self.clock = clock
        self._lock = threading.Lock()
        # Two views of the same entries: by creation (which, max_age being one for all, is
        # also the order they expire in) and by recency (for the capacity bound).
        self._by_age: OrderedDict[_Key, _Entry] = OrderedDict()
        self._by_use: OrderedDict[_Key, None] = OrderedDict()
        # Counts, changed under the lock (no second lock on the hot path); the registry
        # reads them through a collector.
        self._hits = {ENCRYPT: 0, DECRYPT: 0}
        self._misses = {ENCRYPT: 0, DECRYPT: 0}
        self._evictions = {(u, why): 0 for u in (ENCRYPT, DECRYPT) for why in REASONS
                           if (u, why) != (DECRYPT, "bytes")}  # no byte limit on decrypt
        self._bypasses = {"unknown_size": 0, "too_large": 0}
        (registry if registry is not None else CollectorRegistry()).register(
            _CacheCollector(self))

    # -- encryption ------------------------------------------------------------------------

    def for_encrypt(self, key_id: str, context_bytes: bytes, size: int | None,
                    make: Callable[[], DataKey]) -> DataKey:
        """A data key for one message of ``size`` plaintext bytes under ``key_id`` and the
        encoded context, which the caller owns and wipes after use: a copy of the cached
        one, or of a fresh one from ``make()``, which is then cached (the very object
        ``make()`` returned, zeroed when it leaves the cache) if it may serve again.

        ``size=None`` (a stream of unknown length) and a size over ``max_bytes`` bypass the
        cache: a fresh key, not cached.
        """
        if size is not None and (not _whole(size) or size < 0):
            raise InvalidInput("message size must be an integer >= 0 or None")
        if size is None or size > self.config.max_bytes:
            why = "unknown_size" if size is None else "too_large"
            with self._lock:
                self._bypasses[why] += 1
            return make()
        key: _Key = (ENCRYPT, key_id, context_bytes)
        with self._lock:
            entry = self._take(key, size)
            if entry is not None:
                dk = entry.data_key
                assert dk is not None
                copy = DataKey(dk.key_id, dk.version, bytearray(dk.plaintext), dk.wrapped)
                self._after_use(key, entry)
                return copy
            self._misses[ENCRYPT] += 1
        fresh = make()
        if self.config.max_messages == 1:
            return fresh  # used up by this message: nothing to keep
        # The copy first: once cached, the key may be evicted (zeroed) by another thread.
        copy = DataKey(fresh.key_id, fresh.version, bytearray(fresh.plaintext), fresh.wrapped)
        if self._put(key, _Entry(ENCRYPT, fresh.plaintext, fresh, 0.0, size)):
            return copy
        copy.wipe()  # another thread cached one first: this one serves its message only
        return fresh

    # -- decryption ------------------------------------------------------------------------

    def for_decrypt(self, blob: bytes, context_bytes: bytes,
                    unwrap: Callable[[], bytearray]) -> bytearray:
        """The plaintext of the sealed data key ``blob`` under the encoded context: a copy
        of the cached one (the caller wipes it after use). On a miss ``unwrap()``'s
        bytearray itself is cached (zeroed when it leaves the cache) and a copy returned.
        Only successful unwraps are cached, so a hit is a (blob, context) pair the HSM has
        already accepted."""
        key: _Key = (DECRYPT, bytes(blob), context_bytes)
        with self._lock:
            entry = self._take(key, 0)
            if entry is not None:
                copy = bytearray(entry.plaintext)
                self._after_use(key, entry)
                return copy
            self._misses[DECRYPT] += 1
        plaintext = unwrap()
        if self.config.max_messages == 1:
            return plaintext
        copy = bytearray(plaintext)  # before it is shared: an eviction may zero it at once
        if self._put(key, _Entry(DECRYPT, plaintext, None, 0.0, 0)):
            return copy
        copy[:] = bytes(len(copy))
        return plaintext

    # -- upkeep ----------------------------------------------------------------------------

    def sweep(self) -> int:
        """Wipe and drop every entry at least ``max_age`` old; how many were dropped.
        (Expired entries also go on every lookup; this is for idle periods.)"""
        with self._lock:
            return self._expire(self.clock())

    def clear(self) -> int:
        """Wipe and drop every entry (the client's ``close`` does this); how many."""
        with self._lock:
            keys = list(self._by_age)
            for key in keys:
                self._evict(key, "clear")
            return len(keys)

    def stats(self) -> dict[str, int]:
        """Entries now (in all and by use), and hits, misses, evictions, bypasses so far."""
        with self._lock:
            encrypting = sum(1 for use, _, _ in self._by_age if use == ENCRYPT)
            return {"entries": len(self._by_age), "encrypt_entries": encrypting,
                    "decrypt_entries": len(self._by_age) - encrypting,
                    "hits": sum(self._hits.values()), "misses": sum(self._misses.values()),
                    "evictions": sum(self._evictions.values()),
                    "bypasses": sum(self._bypasses.values())}

    def __len__(self) -> int:
        return len(self._by_age)

    def __repr__(self) -> str:
        s = self.stats()
        c = self.config
        return (f"<DataKeyCache entries={s['entries']} (encrypt={s['encrypt_entries']}, "
                f"decrypt={s['decrypt_entries']}) hits={s['hits']} misses={s['misses']} "
                f"evictions={s['evictions']} bypasses={s['bypasses']} max_age={c.max_age} "
                f"max_messages={c.max_messages} max_bytes={c.max_bytes} "
                f"capacity={c.capacity}>")

    # -- under the lock --------------------------------------------------------------------

    def _take(self, key: _Key, size: int) -> _Entry | None:
        """The entry for ``key`` if it may serve one more message of ``size`` bytes (its
        counts then include it); an entry that may not is evicted."""
        self._expire(self.clock())
        entry = self._by_age.get(key)
        if entry is None:
            return None
        c = self.config
        if entry.messages + 1 > c.max_messages:
            self._evict(key, "messages")
            return None
        if entry.nbytes + size > c.max_bytes:
            self._evict(key, "bytes")
            return None
        entry.messages += 1
        entry.nbytes += size
        self._hits[entry.use] += 1
        return entry

    def _after_use(self, key: _Key, entry: _Entry) -> None:
        """An entry just served: most recently used, or gone if that was its last message
        (its copy is already made, so wiping it now takes nothing from the caller)."""
        if entry.messages >= self.config.max_messages:
            self._evict(key, "messages")
        else:
            self._by_use.move_to_end(key)

    def _put(self, key: _Key, entry: _Entry) -> bool:
        """Store a new entry (made now); False when another thread stored one first."""
        with self._lock:
            now = self.clock()
            self._expire(now)
            if key in self._by_age:
                return False
            while len(self._by_age) >= self.config.capacity:
                oldest = next(iter(self._by_use))
                self._evict(oldest, "capacity")
            entry.created = now
            self._by_age[key] = entry
            self._by_use[key] = None
            return True

    def _expire(self, now: float) -> int:
        """Evict the entries at least ``max_age`` old: the first ones by creation."""
        dropped = 0
        max_age = self.config.max_age
        while self._by_age:
            key, entry = next(iter(self._by_age.items()))
            if now - entry.created < max_age:
                break
            self._evict(key, "age")
            dropped += 1
        return dropped

    def _evict(self, key: _Key, why: str) -> None:
        entry = self._by_age.pop(key)
        del self._by_use[key]
        entry.wipe()
        self._evictions[(entry.use, why)] += 1

    def _families(self, samples: bool) -> Iterator[CounterMetricFamily]:
        hits = CounterMetricFamily("hsm_datakey_cache_hits", "Data keys served from the cache",
                                   labels=["use"])
        misses = CounterMetricFamily("hsm_datakey_cache_misses",
                                     "Cache lookups that went to the HSM", labels=["use"])
        evictions = CounterMetricFamily("hsm_datakey_cache_evictions",
                                        "Cached data keys wiped and dropped, by reason",
                                        labels=["use", "reason"])
        bypasses = CounterMetricFamily("hsm_datakey_cache_bypasses",
                                       "Encryptions that did not use the cache (size unknown "
                                       "or over max_bytes)", labels=["reason"])
        if samples:
            with self._lock:
                for use, n in self._hits.items():
                    hits.add_metric([use], n)
                for use, n in self._misses.items():
                    misses.add_metric([use], n)
                for (use, why), n in self._evictions.items():
                    evictions.add_metric([use, why], n)
                for why, n in self._bypasses.items():
                    bypasses.add_metric([why], n)
        yield from (hits, misses, evictions, bypasses)


class _CacheCollector(Collector):
    def __init__(self, cache: DataKeyCache) -> None:
        self._cache = cache

    def describe(self) -> Iterator[CounterMetricFamily]:
        return self._cache._families(samples=False)

    def collect(self) -> Iterator[CounterMetricFamily]:
        return self._cache._families(samples=True)
