"""A stateful property test: random fault sequences over fake members.

Invariants checked after every step:
- no idempotent call fails while a member that is not faulty holds the key;
- every key that creation reported holds on at least ``quorum`` members, same KCV;
- a failed creation leaves the key on no member.
"""

from __future__ import annotations

from collections.abc import Mapping

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

import hsm
from hsm.cluster import Cluster, Operation
from hsm.keys import DataKey
from hsm.testing.fakes import FakeKeyring, FakeMember


def gdk(cluster: Cluster[FakeKeyring], key_id: str,
        context: Mapping[str, str] | None = None) -> DataKey:
    return cluster.call(Operation.GENERATE_DATA_KEY,
                        lambda ring: ring.generate_data_key(key_id, context))


def unwrap(cluster: Cluster[FakeKeyring], blob: bytes,
           context: Mapping[str, str] | None = None) -> bytearray:
    return cluster.call(Operation.UNWRAP, lambda ring: ring.unwrap(blob, context))


N = 3
QUORUM = 2


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class ClusterMachine(RuleBasedStateMachine):
    @initialize()
    def start(self) -> None:
        self.clock = Clock()
        self.members = [FakeMember(f"m{i}") for i in range(N)]
        self.cluster = Cluster(self.members, quorum=QUORUM, monitor=False, threaded=False,
                               clock=self.clock, probe_interval=1.0)
        self.cluster.open()
        self.keys: dict[str, str] = {}  # key id -> kcv
        self.blobs: list[tuple[str, bytes, bytearray]] = []

    def teardown(self) -> None:
        self.cluster.close()

    def _servable(self, key_id: str) -> bool:
        return any(not m.faulty and (key_id, 1) in m.keys for m in self.members)

    @rule(i=st.integers(0, N - 1), transient=st.booleans())
    def fault(self, i: int, transient: bool) -> None:
        if transient:
            self.members[i].fail()
        else:
            self.members[i].corrupt = True

    @rule(i=st.integers(0, N - 1))
    def heal(self, i: int) -> None:
        self.members[i].heal()

    @rule(seconds=st.sampled_from([0.5, 1.0, 5.0, 60.0]))
    def time_passes(self, seconds: float) -> None:
        self.clock.now += seconds
        self.cluster.check_members()

    @rule()
    def create(self) -> None:
        try:
            info = self.cluster.create_key()
        except (hsm.HSMUnavailable, hsm.ReplicationError):
            return
        self.keys[info.key_id] = info.kcv

    @rule(data=st.data())
    def generate_and_unwrap(self, data: st.DataObject) -> None:
        if not self.keys:
            return
        key_id = data.draw(st.sampled_from(sorted(self.keys)))
        ok = self._servable(key_id)
        try:
            dk = gdk(self.cluster, key_id, {"k": "v"})
        except hsm.HSMError as exc:
            if ok:
                raise AssertionError("generate failed with a good member holding the key"
                                     ) from exc
            return
        self.blobs.append((key_id, dk.wrapped, dk.plaintext))

    @rule(data=st.data())
    def unwrap_old(self, data: st.DataObject) -> None:
        if not self.blobs:
            return
        key_id, blob, plaintext = data.draw(st.sampled_from(self.blobs))
        ok = self._servable(key_id)
        try:
            got = unwrap(self.cluster, blob, {"k": "v"})
        except hsm.HSMError as exc:
            if ok:
                raise AssertionError("unwrap failed with a good member holding the key"
                                     ) from exc
            return
        assert got == plaintext

    @invariant()
    def keys_reach_quorum(self) -> None:
        if not hasattr(self, "keys"):
            return
        for key_id, kcv in self.keys.items():
            holders = [m for m in self.members if (key_id, 1) in m.keys]
            assert len(holders) >= QUORUM
            assert {m.keyring.key_info(key_id, 1).kcv for m in holders if not m.faulty} <= {kcv}

    @invariant()
    def no_orphans(self) -> None:
        if not hasattr(self, "keys"):
            return
        for m in self.members:
            assert {k for k, _ in m.keys} <= set(self.keys)


ClusterMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=40,
                                            deadline=None)
TestCluster = ClusterMachine.TestCase
