"""The data-key cache: limits (age, messages, bytes, capacity), partitions, wiping, threads
and metrics, through the client on SoftHSM and on the cache alone with a fake clock."""

from __future__ import annotations

import io
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

import hsm
from hsm.envelope import read_header
from hsm.envelope.cache import CacheConfig, DataKeyCache
from hsm.keys import DataKey, KeyInfo
from hsm.testing import Harness

AGE = 60.0
CTX = {"tenant": "acme"}


class FakeClock:
    """Monotonic seconds that move only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Recorder:
    """Wraps a client's HSM call, counting calls and keeping what each returned."""

    def __init__(self, client: hsm.Client, name: str) -> None:
        self.inner = getattr(client, name)
        self.results: list[Any] = []
        setattr(client, name, self)

    def __call__(self, *args: Any) -> Any:
        result = self.inner(*args)
        self.results.append(result)
        return result

    @property
    def calls(self) -> int:
        return len(self.results)


MakeClient = Callable[..., hsm.Client]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_client(shared_harness: Harness, client: hsm.Client, clock: FakeClock,
                ) -> Iterator[MakeClient]:
    """Clients with a cache of the given limits on the shared harness, on the fake clock."""
    made: list[hsm.Client] = []

    def make(**limits: Any) -> hsm.Client:
        limits.setdefault("max_age", AGE)
        c = hsm.open(shared_harness.config_path, cache=CacheConfig(**limits))
        made.append(c)
        assert c.cache is not None
        c.cache.clock = clock
        return c

    yield make
    for c in made:
        c.close()


def blob_of(message: bytes) -> bytes:
    return read_header(io.BytesIO(message)).blob


def hsm_calls(c: hsm.Client, operation: str) -> int:
    return c.metrics.calls[(c.members[0].name, operation)].value()


def zeroed(data: bytearray) -> bool:
    return len(data) > 0 and not any(data)


def fake_key(n: int) -> DataKey:
    return DataKey("k", 1, bytearray([n % 255 + 1]) * 32, b"sealed-%d" % n)


class Maker:
    """A fake ``make`` for the cache alone: fresh distinct keys, all kept."""

    def __init__(self) -> None:
        self.made: list[DataKey] = []

    def __call__(self) -> DataKey:
        key = fake_key(len(self.made))
        self.made.append(key)
        return key


# -- configuration -----------------------------------------------------------------------


@pytest.mark.parametrize("limits", [
    {"max_age": 0}, {"max_age": -1.0}, {"max_age": float("inf")}, {"max_age": float("nan")},
    {"max_age": True}, {"max_age": "60"},
    {"max_age": 1, "max_messages": 0}, {"max_age": 1, "max_messages": 2**32 + 1},
    {"max_age": 1, "max_bytes": -1}, {"max_age": 1, "max_bytes": 2**63},
    {"max_age": 1, "capacity": 0}, {"max_age": 1, "max_messages": 1.5},
])
def test_config_refuses_bad_limits(limits: dict[str, Any]) -> None:
    """Limits out of the Encryption SDK's bounds (max_age > 0 required) are InvalidInput."""
    with pytest.raises(hsm.InvalidInput):
        CacheConfig(**limits)


def test_config_requires_max_age() -> None:
    """max_age has no default, as in the Encryption SDK."""
    with pytest.raises(TypeError):
        CacheConfig()  # type: ignore[call-arg]


def test_off_by_default(client: hsm.Client, master_key: KeyInfo) -> None:
    """A client made without ``cache=`` has none and asks the HSM for every message."""
    assert client.cache is None
    before = hsm_calls(client, "generate_data_key")
    first = client.encrypt(master_key.key_id, b"x" * 10, CTX)
    second = client.encrypt(master_key.key_id, b"x" * 10, CTX)
    assert hsm_calls(client, "generate_data_key") - before == 2
    assert blob_of(first) != blob_of(second)


# -- encryption limits -------------------------------------------------------------------


def test_hit_within_max_age(make_client: MakeClient, master_key: KeyInfo,
                            clock: FakeClock) -> None:
    """Messages encrypted before max_age has passed share one data key and one HSM call."""
    c = make_client()
    first = c.encrypt(master_key.key_id, b"a" * 100, CTX)
    clock.advance(AGE - 0.001)
    second = c.encrypt(master_key.key_id, b"b" * 100, CTX)
    assert hsm_calls(c, "generate_data_key") == 1
    assert blob_of(first) == blob_of(second)
    assert c.decrypt(first, CTX) == b"a" * 100
    assert c.decrypt(second, CTX) == b"b" * 100


def test_miss_after_max_age(make_client: MakeClient, master_key: KeyInfo,
                            clock: FakeClock) -> None:
    """At max_age the cached key is wiped and the next message gets a fresh one."""
    c = make_client()
    made = Recorder(c, "generate_data_key")
    first = c.encrypt(master_key.key_id, b"a", CTX)
    clock.advance(AGE)
    second = c.encrypt(master_key.key_id, b"b", CTX)
    assert made.calls == 2
    assert blob_of(first) != blob_of(second)
    assert zeroed(made.results[0].plaintext)
    assert not zeroed(made.results[1].plaintext)
    assert c.cache is not None
    assert c.cache.stats()["evictions"] == 1


def test_max_messages_exact(make_client: MakeClient, master_key: KeyInfo) -> None:
    """A key encrypts exactly max_messages messages, then is wiped at once."""
    c = make_client(max_messages=3)
    made = Recorder(c, "generate_data_key")
    messages = [c.encrypt(master_key.key_id, b"m%d" % i, CTX) for i in range(4)]
    assert made.calls == 2
    assert len({blob_of(m) for m in messages[:3]}) == 1
    assert blob_of(messages[3]) != blob_of(messages[0])
    assert zeroed(made.results[0].plaintext)  # its third message used it up
    assert [c.decrypt(m, CTX) for m in messages] == [b"m%d" % i for i in range(4)]


def test_max_messages_one_never_caches(make_client: MakeClient, master_key: KeyInfo) -> None:
    """With max_messages=1 nothing is kept: every message has its own key."""
    c = make_client(max_messages=1)
    for _ in range(3):
        c.encrypt(master_key.key_id, b"x", CTX)
    assert hsm_calls(c, "generate_data_key") == 3
    assert c.cache is not None
    assert len(c.cache) == 0


def test_max_bytes_exact(make_client: MakeClient, master_key: KeyInfo) -> None:
    """A key encrypts up to exactly max_bytes bytes; the message that would pass it gets a
    fresh key, and a message larger than max_bytes bypasses the cache."""
    c = make_client(max_bytes=3000)
    made = Recorder(c, "generate_data_key")
    messages = [c.encrypt(master_key.key_id, bytes(1000), CTX) for _ in range(3)]
    assert made.calls == 1  # 3000 bytes: exactly the limit
    fourth = c.encrypt(master_key.key_id, bytes(1000), CTX)
    assert made.calls == 2
    assert blob_of(fourth) != blob_of(messages[0])
    assert zeroed(made.results[0].plaintext)
    big = c.encrypt(master_key.key_id, bytes(3001), CTX)
    assert made.calls == 3
    fifth = c.encrypt(master_key.key_id, bytes(10), CTX)
    assert made.calls == 3
    assert blob_of(fifth) == blob_of(fourth)
    assert blob_of(big) not in {blob_of(fourth), blob_of(messages[0])}
    assert c.cache is not None
    assert c.cache.stats()["bypasses"] == 1


def test_partitioned_by_key_and_context(make_client: MakeClient, client: hsm.Client,
                                        master_key: KeyInfo) -> None:
    """Each (master key, context) pair has its own data key; context order is irrelevant."""
    other = client.create_key()
    c = make_client()
    pairs = [(k, ctx) for k in (master_key.key_id, other.key_id)
             for ctx in ({"a": "1", "b": "2"}, {"a": "1", "b": "3"}, {})]
    first = [c.encrypt(k, b"x", ctx) for k, ctx in pairs]
    assert hsm_calls(c, "generate_data_key") == len(pairs)
    assert len({blob_of(m) for m in first}) == len(pairs)
    again = [c.encrypt(k, b"y", dict(reversed(list(ctx.items())))) for k, ctx in pairs]
    assert hsm_calls(c, "generate_data_key") == len(pairs)
    assert [blob_of(m) for m in again] == [blob_of(m) for m in first]
    for message, (_, ctx) in zip(again, pairs, strict=True):
        assert c.decrypt(message, ctx) == b"y"


def test_stream_encrypt_bypasses(make_client: MakeClient, master_key: KeyInfo) -> None:
    """A stream (length unknown) always gets a fresh key and leaves nothing cached."""
    c = make_client()
    outs = []
    for _ in range(2):
        out = io.BytesIO()
        c.encrypt_stream(master_key.key_id, io.BytesIO(b"s" * 5000), out, CTX)
        outs.append(out.getvalue())
    assert hsm_calls(c, "generate_data_key") == 2
    assert blob_of(outs[0]) != blob_of(outs[1])
    assert c.cache is not None
    assert len(c.cache) == 0
    assert c.cache.stats()["bypasses"] == 2
    assert c.decrypt(outs[1], CTX) == b"s" * 5000


def test_capacity_least_recently_used(make_client: MakeClient, master_key: KeyInfo) -> None:
    """Past capacity the least recently used entry is wiped and dropped."""
    c = make_client(capacity=2)
    made = Recorder(c, "generate_data_key")
    c.encrypt(master_key.key_id, b"x", {"n": "0"})
    c.encrypt(master_key.key_id, b"x", {"n": "1"})
    c.encrypt(master_key.key_id, b"x", {"n": "0"})  # n=0 is now the most recent
    c.encrypt(master_key.key_id, b"x", {"n": "2"})  # n=1 leaves
    assert made.calls == 3
    assert zeroed(made.results[1].plaintext)
    assert not zeroed(made.results[0].plaintext)
    c.encrypt(master_key.key_id, b"x", {"n": "0"})
    assert made.calls == 3


# -- decryption --------------------------------------------------------------------------


def test_decrypt_cache_avoids_unwrap(make_client: MakeClient, client: hsm.Client,
                                     master_key: KeyInfo) -> None:
    """Messages sharing a sealed data key need one unwrap between them."""
    c = make_client()
    messages = [c.encrypt(master_key.key_id, b"m%d" % i, CTX) for i in range(5)]
    assert len({blob_of(m) for m in messages}) == 1
    reader = make_client()
    unwraps = Recorder(reader, "unwrap")
    for _ in range(2):
        assert [reader.decrypt(m, CTX) for m in messages] == [b"m%d" % i for i in range(5)]
    assert unwraps.calls == 1
    assert hsm_calls(reader, "unwrap") == 1
    one = client.encrypt(master_key.key_id, b"z", CTX)  # another data key
    assert reader.decrypt(one) == b"z"
    assert unwraps.calls == 2


def test_decrypt_cache_limits(make_client: MakeClient, master_key: KeyInfo,
                              clock: FakeClock) -> None:
    """The decrypt side honours max_age and max_messages and wipes what it drops."""
    message = make_client().encrypt(master_key.key_id, b"hello", CTX)
    reader = make_client(max_messages=2)
    unwraps = Recorder(reader, "unwrap")
    for _ in range(3):
        assert reader.decrypt(message, CTX) == b"hello"
    assert unwraps.calls == 2  # two opens per unwrap
    assert zeroed(unwraps.results[0])
    assert not zeroed(unwraps.results[1])
    clock.advance(AGE)
    assert reader.decrypt(message, CTX) == b"hello"
    assert unwraps.calls == 3
    assert zeroed(unwraps.results[1])


def test_decrypt_cache_partitioned_by_context(make_client: MakeClient,
                                              master_key: KeyInfo) -> None:
    """A cached key is only served for the exact context it was opened with: a message
    whose context was altered goes to the HSM, which refuses it."""
    c = make_client()
    message = c.encrypt(master_key.key_id, b"x", CTX)
    c.decrypt(message, CTX)
    unwraps = Recorder(c, "unwrap")
    tampered = message.replace(b"acme", b"acmf")
    assert tampered != message
    with pytest.raises(hsm.InvalidCiphertext):
        c.decrypt(tampered)
    assert unwraps.calls == 0  # the HSM refused: nothing returned, nothing cached
    assert hsm_calls(c, "unwrap") == 2
    assert c.cache is not None
    assert c.cache.stats()["decrypt_entries"] == 1
    assert c.decrypt(message, CTX) == b"x"
    assert hsm_calls(c, "unwrap") == 2


def test_cached_messages_decrypt_without_cache(make_client: MakeClient, client: hsm.Client,
                                               master_key: KeyInfo) -> None:
    """Messages made under a cached key are ordinary messages: a client without a cache
    decrypts them."""
    c = make_client(max_messages=4)
    messages = [c.encrypt(master_key.key_id, bytes([i]) * (i * 300), CTX) for i in range(10)]
    assert hsm_calls(c, "generate_data_key") == 3
    assert [client.decrypt(m, CTX) for m in messages] == [
        bytes([i]) * (i * 300) for i in range(10)]


# -- wiping ------------------------------------------------------------------------------


def test_close_wipes_every_key(make_client: MakeClient, master_key: KeyInfo) -> None:
    """Closing the client zeroes every cached plaintext key, encrypt and decrypt side."""
    c = make_client()
    made = Recorder(c, "generate_data_key")
    unwraps = Recorder(c, "unwrap")
    messages = [c.encrypt(master_key.key_id, b"x", {"n": str(i)}) for i in range(3)]
    for i, m in enumerate(messages):
        c.decrypt(m, {"n": str(i)})
    assert made.calls == 3
    assert unwraps.calls == 3
    assert not any(zeroed(k.plaintext) for k in made.results)
    assert not any(zeroed(p) for p in unwraps.results)
    c.close()
    assert all(zeroed(k.plaintext) for k in made.results)
    assert all(zeroed(p) for p in unwraps.results)
    assert c.cache is not None
    assert len(c.cache) == 0
    assert c.cache.stats()["evictions"] == 6


def test_sweep_drops_expired(clock: FakeClock) -> None:
    """sweep() wipes and drops entries at least max_age old, and only those."""
    cache = DataKeyCache(CacheConfig(max_age=10), clock=clock)
    make = Maker()
    cache.for_encrypt("k", b"\x00\x00", 1, make)
    clock.advance(5)
    cache.for_encrypt("k", b"\x00\x01", 1, make)
    clock.advance(5)
    assert cache.sweep() == 1
    assert zeroed(make.made[0].plaintext)
    assert not zeroed(make.made[1].plaintext)
    assert len(cache) == 1
    clock.advance(5)
    assert cache.sweep() == 1
    assert len(cache) == 0


def test_returned_keys_are_copies(clock: FakeClock) -> None:
    """What the cache hands out is the caller's to wipe; wiping it leaves the cache intact,
    and an eviction never zeroes a key already handed out."""
    cache = DataKeyCache(CacheConfig(max_age=10), clock=clock)
    make = Maker()
    first = cache.for_encrypt("k", b"\x00\x00", 1, make)
    assert first is not make.made[0]
    assert first.plaintext == make.made[0].plaintext
    first.wipe()
    second = cache.for_encrypt("k", b"\x00\x00", 1, make)
    assert second.plaintext == fake_key(0).plaintext
    cache.clear()
    assert zeroed(make.made[0].plaintext)
    assert second.plaintext == fake_key(0).plaintext
    assert len(make.made) == 1
    opened = bytearray(b"\x07" * 32)
    got = cache.for_decrypt(b"blob", b"\x00\x00", lambda: opened)
    assert got is not opened
    assert got == opened
    got[:] = bytes(32)
    assert cache.for_decrypt(b"blob", b"\x00\x00", lambda: bytearray(32)) == b"\x07" * 32


# -- threads -----------------------------------------------------------------------------


def test_threads_share_the_cache(make_client: MakeClient, client: hsm.Client,
                                 master_key: KeyInfo) -> None:
    """Eight threads encrypting through one cache: every message decrypts, and hits plus
    misses account for every message."""
    c = make_client(max_messages=7)
    per_thread = 40
    results: dict[int, list[bytes]] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(8, timeout=60)

    def work(n: int) -> None:
        try:
            start.wait()
            ctx = {"tenant": str(n % 2)}
            results[n] = [c.encrypt(master_key.key_id, b"%d-%d" % (n, i), ctx)
                          for i in range(per_thread)]
        except BaseException as err:  # reported below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(n,), daemon=True) for n in range(8)]
    try:
        for t in threads:
            t.start()
    finally:  # the barrier times out if a thread never started
        for t in threads:
            t.join(timeout=60)
    assert not errors
    for n, messages in results.items():
        ctx = {"tenant": str(n % 2)}
        assert [client.decrypt(m, ctx) for m in messages] == [
            b"%d-%d" % (n, i) for i in range(per_thread)]
    assert c.cache is not None
    stats = c.cache.stats()
    assert stats["hits"] + stats["misses"] == 8 * per_thread
    assert hsm_calls(c, "generate_data_key") == stats["misses"]
    # Each key serves at most 7 messages.
    uses: dict[bytes, int] = {}
    for messages in results.values():
        for m in messages:
            uses[blob_of(m)] = uses.get(blob_of(m), 0) + 1
    assert max(uses.values()) <= 7
    assert stats["misses"] >= 8 * per_thread // 7


def test_concurrent_misses_call_the_hsm_outside_the_lock(clock: FakeClock) -> None:
    """Two threads missing at once both call ``make`` (the lock is not held across it); one
    key is cached, the other serves its own message only."""
    cache = DataKeyCache(CacheConfig(max_age=10), clock=clock)
    both_inside = threading.Barrier(2, timeout=5)
    made: list[DataKey] = []
    lock = threading.Lock()

    def make() -> DataKey:
        both_inside.wait()  # would time out if the cache held its lock around make()
        with lock:
            key = fake_key(len(made))
            made.append(key)
        return key

    got: list[DataKey] = []
    threads = [threading.Thread(target=lambda: got.append(
        cache.for_encrypt("k", b"\x00\x00", 1, make)), daemon=True) for _ in range(2)]
    try:
        for t in threads:
            t.start()
    finally:
        for t in threads:
            t.join(timeout=30)
    assert len(made) == 2
    assert len(got) == 2
    assert len(cache) == 1
    assert {bytes(k.plaintext) for k in got} == {bytes(k.plaintext) for k in made}
    third = cache.for_encrypt("k", b"\x00\x00", 1, make)
    assert len(made) == 2
    assert third.wrapped in {k.wrapped for k in made}


# -- observability -----------------------------------------------------------------------


def test_metrics_in_the_client_registry(make_client: MakeClient, master_key: KeyInfo,
                                        clock: FakeClock) -> None:
    """Hits, misses and evictions by reason appear in ``client.metrics.registry``."""
    c = make_client()
    messages = [c.encrypt(master_key.key_id, b"x", CTX) for _ in range(3)]
    for m in messages:
        c.decrypt(m, CTX)
    clock.advance(AGE)
    c.encrypt(master_key.key_id, b"x", CTX)
    out = io.BytesIO()
    c.encrypt_stream(master_key.key_id, io.BytesIO(b"x"), out, CTX)
    text = generate_latest(c.metrics.registry).decode()
    for line in (
        'hsm_datakey_cache_hits_total{use="encrypt"} 2.0',
        'hsm_datakey_cache_misses_total{use="encrypt"} 2.0',
        'hsm_datakey_cache_hits_total{use="decrypt"} 2.0',
        'hsm_datakey_cache_misses_total{use="decrypt"} 1.0',
        'hsm_datakey_cache_evictions_total{reason="age",use="encrypt"} 1.0',
        'hsm_datakey_cache_evictions_total{reason="age",use="decrypt"} 1.0',
        'hsm_datakey_cache_evictions_total{reason="capacity",use="encrypt"} 0.0',
        'hsm_datakey_cache_bypasses_total{reason="unknown_size"} 1.0',
    ):
        assert line in text
    assert 'reason="bytes",use="decrypt"' not in text  # no byte limit when decrypting


def test_caches_on_one_registry_collide() -> None:
    """One registry holds one cache's metrics: each client has a registry of its own."""
    registry = CollectorRegistry()
    DataKeyCache(CacheConfig(max_age=1), registry)
    with pytest.raises(ValueError, match="Duplicated"):
        DataKeyCache(CacheConfig(max_age=1), registry)


def test_repr_shows_counts_not_keys(make_client: MakeClient, master_key: KeyInfo) -> None:
    """The cache's repr has its counts and limits, never key bytes."""
    c = make_client()
    made = Recorder(c, "generate_data_key")
    unwraps = Recorder(c, "unwrap")
    message = c.encrypt(master_key.key_id, b"x", CTX)
    c.encrypt(master_key.key_id, b"x", CTX)
    c.decrypt(message, CTX)
    text = repr(c.cache)
    assert "entries=2 (encrypt=1, decrypt=1) hits=1 misses=2" in text
    for secret in (bytes(made.results[0].plaintext), bytes(unwraps.results[0])):
        assert secret.hex() not in text.lower()
        assert repr(secret)[2:-1] not in text
    assert made.results[0].wrapped.hex() not in text.lower()
