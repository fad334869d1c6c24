"""Cluster logic over in-memory members: routing, failover, deadlines, quorum, resync."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping

import pytest

import hsm
from hsm.cluster import Cluster, Operation, State
from hsm.errors import Reason
from hsm.keys import DataKey
from hsm.testing.fakes import FakeKeyring, FakeMember


def gdk(cluster: Cluster[FakeKeyring], key_id: str,
        context: Mapping[str, str] | None = None) -> DataKey:
    return cluster.call(Operation.GENERATE_DATA_KEY,
                        lambda ring: ring.generate_data_key(key_id, context))


def unwrap(cluster: Cluster[FakeKeyring], blob: bytes,
           context: Mapping[str, str] | None = None) -> bytearray:
    return cluster.call(Operation.UNWRAP, lambda ring: ring.unwrap(blob, context))


def wrap(cluster: Cluster[FakeKeyring], key_id: str, plaintext: bytes,
         context: Mapping[str, str] | None = None) -> bytes:
    return cluster.call(Operation.WRAP, lambda ring: ring.wrap(key_id, plaintext, context))


CTX = {"tenant": "acme"}
Fakes = tuple[Cluster[FakeKeyring], list[FakeMember]]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make(n: int, clock: Clock, **kw: object) -> Fakes:
    members = [FakeMember(f"m{i}") for i in range(n)]
    cluster = Cluster(members, monitor=False, clock=clock, **kw)  # type: ignore[arg-type]
    cluster.open()
    return cluster, members


@pytest.fixture
def three(clock: Clock) -> Iterator[Fakes]:
    cluster, members = make(3, clock, quorum=2, deadline_ms=200)
    yield cluster, members
    for m in members:
        m.heal()
    cluster.close()


def test_failover_mode_uses_the_first_healthy_member(three: Fakes,
                                                     ) -> None:
    """In failover mode every call goes to the first member while it is healthy."""
    cluster, (a, b, c) = three
    key = cluster.create_key()
    for _ in range(5):
        gdk(cluster, key.key_id, CTX)
    assert a.calls["generate_data_key"] == 5
    assert b.calls["generate_data_key"] == c.calls["generate_data_key"] == 0


def test_transient_error_fails_over_and_marks_the_member_down(
    three: Fakes,
) -> None:
    """A device error on the primary moves the call on; the primary is down and gets no
    more work, and the call still succeeds."""
    cluster, (a, b, _) = three
    key = cluster.create_key()
    dk = gdk(cluster, key.key_id, CTX)
    a.fail()
    assert unwrap(cluster, dk.wrapped, CTX) == dk.plaintext
    assert cluster.state_of("m0") is State.DOWN
    unwrap(cluster, dk.wrapped, CTX)
    assert a.calls["unwrap"] == 1
    assert b.calls["unwrap"] == 2
    assert cluster.metrics.failovers.labels("m0")._value.get() == 1


def test_business_errors_do_not_change_health(three: Fakes) -> None:
    """A wrong context or an unknown key is the caller's mistake: no member goes down."""
    cluster, members = three
    key = cluster.create_key()
    dk = gdk(cluster, key.key_id, CTX)
    with pytest.raises(hsm.InvalidCiphertext):
        unwrap(cluster, dk.wrapped, {"tenant": "evil"})
    with pytest.raises(hsm.KeyNotFound):
        gdk(cluster, "00000000-0000-4000-8000-000000000000", CTX)
    with pytest.raises(hsm.InvalidContext):
        gdk(cluster, key.key_id, {"a": 1})  # type: ignore[dict-item]
    assert all(cluster.state_of(m.name) is State.HEALTHY for m in members)


def test_a_faulty_member_cannot_turn_good_ciphertext_bad(
    three: Fakes,
) -> None:
    """A member that says "does not verify" to a good blob is overruled by the next one,
    and taken out of service."""
    cluster, (a, b, _) = three
    key = cluster.create_key()
    dk = gdk(cluster, key.key_id, CTX)
    a.corrupt = True
    assert unwrap(cluster, dk.wrapped, CTX) == dk.plaintext
    assert b.calls["unwrap"] == 1
    assert cluster.state_of("m0") is State.DOWN


def test_real_tampering_is_confirmed_by_a_second_member(
    three: Fakes,
) -> None:
    """A tampered blob is refused by every member, then InvalidCiphertext is raised."""
    cluster, (a, b, c) = three
    key = cluster.create_key()
    blob = bytearray(wrap(cluster, key.key_id, bytes(32), CTX))
    blob[-1] ^= 1
    with pytest.raises(hsm.InvalidCiphertext):
        unwrap(cluster, bytes(blob), CTX)
    assert a.calls["unwrap"] == b.calls["unwrap"] == c.calls["unwrap"] == 1
    assert all(cluster.state_of(m.name) is State.HEALTHY for m in (a, b, c))


def test_create_is_never_repeated_elsewhere(three: Fakes) -> None:
    """A transient error while creating a key raises; no other member is asked to create."""
    cluster, (a, b, c) = three
    a.fail_next(1)
    with pytest.raises(hsm.HSMUnavailable):
        cluster.create_key()
    assert a.calls["create_key"] == 1
    assert b.calls["create_key"] == c.calls["create_key"] == 0


def test_every_member_down_gives_all_attempts(three: Fakes) -> None:
    """When no member can serve, ClusterUnavailable lists an attempt per member."""
    cluster, members = three
    key = cluster.create_key()
    for m in members:
        m.fail()
    with pytest.raises(hsm.ClusterUnavailable) as info:
        gdk(cluster, key.key_id, CTX)
    assert sorted(a.member for a in info.value.attempts) == ["m0", "m1", "m2"]


def test_down_members_are_a_last_resort(three: Fakes) -> None:
    """With every member marked down but one actually working, calls still succeed."""
    cluster, (a, b, c) = three
    key = cluster.create_key()
    for m in (a, b, c):
        m.fail()
    with pytest.raises(hsm.ClusterUnavailable):
        gdk(cluster, key.key_id, CTX)
    c.heal()
    dk = gdk(cluster, key.key_id, CTX)
    assert unwrap(cluster, dk.wrapped, CTX) == dk.plaintext


def test_a_hang_costs_one_deadline_and_makes_the_member_suspect(
    three: Fakes,
) -> None:
    """A hung member is given up after the deadline, the call succeeds elsewhere, the member
    is suspect (no new work) until the hung call returns and the monitor has brought it up
    to date."""
    cluster, (a, b, _) = three
    key = cluster.create_key()
    a.hang()
    dk = gdk(cluster, key.key_id, CTX)
    assert b.calls["generate_data_key"] == 1
    assert cluster.state_of("m0") is State.SUSPECT
    gdk(cluster, key.key_id, CTX)
    assert a.calls["generate_data_key"] == 1  # no new work while suspect
    a.heal()
    for _ in range(1000):
        if cluster.health["m0"].hung == 0:
            break
        threading.Event().wait(0.01)
    assert cluster.state_of("m0") is State.SUSPECT  # answered, not yet brought up to date
    cluster.check_members()
    assert cluster.state_of("m0") is State.HEALTHY
    assert unwrap(cluster, dk.wrapped, CTX) == dk.plaintext


def test_a_key_made_while_a_member_was_suspect_reaches_it_when_it_answers(
    three: Fakes,
) -> None:
    """Going from suspect back to healthy brings the member up to date like a re-admission
    after down: a key created meanwhile is copied to it."""
    cluster, (a, _b, _c) = three
    a.hang()
    with pytest.raises(hsm.HSMUnavailable):
        cluster.call_on(a, Operation.RANDOM, lambda ring: ring.generate_random(1))
    assert cluster.state_of("m0") is State.SUSPECT
    key = cluster.create_key()  # on m1 and m2: m0 is suspect
    assert (key.key_id, 1) not in a.keys
    a.heal()
    for _ in range(1000):
        if cluster.health["m0"].hung == 0:
            break
        threading.Event().wait(0.01)
    cluster.check_members()
    assert cluster.state_of("m0") is State.HEALTHY
    assert (key.key_id, 1) in a.keys
    assert cluster.verify().ok


def test_balanced_mode_spreads_by_outstanding_calls(clock: Clock) -> None:
    """In balanced mode a member with calls in flight is passed over for an idle one."""
    cluster, (a, b) = make(2, clock, mode="balanced", deadline_ms=2000)
    try:
        key = cluster.create_key()
        a.hang()
        done = threading.Event()

        def slow() -> None:
            gdk(cluster, key.key_id, CTX)
            done.set()

        cluster.deadline = 5.0
        t = threading.Thread(target=slow, daemon=True)
        t.start()
        for _ in range(200):
            if cluster.health["m0"].outstanding:
                break
            threading.Event().wait(0.005)
        gdk(cluster, key.key_id, CTX)
        assert b.calls["generate_data_key"] == 1
        a.heal()
        t.join(5)
        assert done.is_set()
    finally:
        a.heal()  # releases the hung call, whatever failed above
        cluster.close()


def test_quorum_creation_and_pending_replication(three: Fakes,
                                                 clock: Clock) -> None:
    """With one member down a key still reaches quorum 2; the down member gets it when it is
    re-admitted, with the same KCV."""
    cluster, (_a, _b, c) = three
    c.fail()
    cluster.call(Operation.RANDOM, lambda ring: ring.generate_random(1))  # c is not asked
    cluster.health["m2"].failed(Reason.DEVICE_ERROR)
    key = cluster.create_key()
    assert (key.key_id, 1) in cluster.pending["m2"]
    assert (key.key_id, 1) not in c.keys
    c.heal()
    clock.now += 10
    cluster.check_members()
    assert cluster.state_of("m2") is State.HEALTHY
    assert c.keyring.key_info(key.key_id, 1).kcv == key.kcv
    assert not cluster.pending["m2"]
    assert cluster.verify().ok


def test_too_few_members_rolls_back(three: Fakes) -> None:
    """If the copies can't reach quorum, the key is destroyed everywhere and the error says
    why."""
    cluster, (a, b, c) = three
    b.fail_next(1)
    c.fail_next(1)
    with pytest.raises(hsm.QuorumNotReached, match="rolled back"):
        cluster.create_key()
    assert not a.keys
    assert not b.keys
    assert not c.keys


def test_kcv_mismatch_rolls_back(three: Fakes) -> None:
    """A copy whose KCV differs (a member with another wrapping key) aborts creation."""
    cluster, (a, b, c) = three

    def refuse(key_id: str, version: int, wrapped: bytes, *,
               expected_kcv: str | None = None) -> hsm.KeyInfo:
        raise hsm.InvalidCiphertext("imported key has another KCV", reason=hsm.Reason.KCV_MISMATCH)

    b.keyring.import_key = refuse  # type: ignore[method-assign]
    with pytest.raises(hsm.ReplicationError, match="m1"):
        cluster.create_key()
    assert not a.keys
    assert not b.keys
    assert not c.keys


def test_a_member_with_another_wrapping_key_is_left_out(
    three: Fakes,
) -> None:
    """A member whose cluster wrapping key differs can't open the copy: the key still
    reaches quorum on the others, and verify() reports the member missing it."""
    cluster, (a, b, c) = three
    b.cluster_key = bytes(32)
    key = cluster.create_key()
    assert (key.key_id, 1) in a.keys
    assert (key.key_id, 1) in c.keys
    assert (key.key_id, 1) not in b.keys
    report = cluster.verify()
    assert not report.ok
    assert {m.name: m.missing for m in report.members}["m1"] == [(key.key_id, 1)]


def test_verify_reports_drift_member_by_member(three: Fakes) -> None:
    """verify() names the keys each member lacks or holds with another KCV."""
    cluster, (_a, b, c) = three
    key = cluster.create_key()
    del c.keys[(key.key_id, 1)]
    b.keys[(key.key_id, 1)] = bytes(32)
    report = cluster.verify()
    assert not report.ok
    by_name = {m.name: m for m in report.members}
    assert by_name["m2"].missing == [(key.key_id, 1)]
    assert by_name["m1"].mismatched == [(key.key_id, 1)]


def test_single_member_cluster_raises_the_members_error(clock: Clock) -> None:
    """A cluster of one behaves like the member: its transient error comes back as is."""
    cluster, (a,) = make(1, clock)
    try:
        key = cluster.create_key()
        a.fail()
        with pytest.raises(hsm.HSMUnavailable) as info:
            gdk(cluster, key.key_id, CTX)
        assert info.value.reason == "device_error"
        a.heal()
        assert gdk(cluster, key.key_id, CTX).key_id == key.key_id
    finally:
        cluster.close()


def test_a_refused_pin_disables_the_member_for_good(clock: Clock) -> None:
    """A member whose PIN is refused at open is disabled: the cluster serves with the
    others, and no probe ever opens it (logs in) again, however much time passes."""
    a, b = FakeMember("a"), FakeMember("b")
    b.fail(hsm.PinIncorrect("token b: the PIN was refused", reason=hsm.Reason.PIN_INCORRECT))
    cluster = Cluster([a, b], monitor=False, clock=clock)
    cluster.open()
    try:
        assert cluster.state_of("b") is State.DISABLED
        assert cluster.health["b"].last_reason is Reason.PIN_INCORRECT
        assert len(cluster.call(Operation.RANDOM, lambda ring: ring.generate_random(4))) == 4
        opens = b.calls["open"]
        for _ in range(50):
            clock.now += 60
            cluster.check_members()
        assert b.calls["open"] == opens == 1
        assert b.calls["ping"] == 0
        with pytest.raises(hsm.QuorumNotReached):
            Cluster([a, b], quorum=2, monitor=False, clock=clock).create_key()
    finally:
        cluster.close()


def test_a_pin_refused_later_disables_the_member(three: Fakes, clock: Clock) -> None:
    """A PIN refused on a later call (a login after recovery) disables the member too."""
    cluster, (a, _b, _c) = three
    a.fail(hsm.PinIncorrect("token m0: the PIN was refused", reason=hsm.Reason.PIN_INCORRECT))
    cluster.call(Operation.RANDOM, lambda ring: ring.generate_random(1))
    assert cluster.state_of("m0") is State.DISABLED
    a.heal()
    clock.now += 3600
    cluster.check_members()
    assert cluster.state_of("m0") is State.DISABLED


def test_no_member_opened_names_every_member(clock: Clock) -> None:
    """When no member opens, the error names each member and why; every PIN refused
    raises PinIncorrect, a single member its own error."""
    a, b = FakeMember("a"), FakeMember("b")
    a.fail(hsm.PinIncorrect("token a: the PIN was refused", reason=hsm.Reason.PIN_INCORRECT))
    b.fail(hsm.PinIncorrect("token b: the PIN was refused", reason=hsm.Reason.PIN_INCORRECT))
    with pytest.raises(hsm.PinIncorrect) as both:
        Cluster([a, b], monitor=False, clock=clock).open()
    assert "a: token a" in str(both.value)
    assert "b: token b" in str(both.value)
    b.fail()  # a device error on b: the errors differ
    with pytest.raises(hsm.ClusterUnavailable) as mixed:
        Cluster([a, b], monitor=False, clock=clock).open()
    assert [x.member for x in mixed.value.attempts] == ["a", "b"]
    with pytest.raises(hsm.PinIncorrect, match="token a"):
        Cluster([a], monitor=False, clock=clock).open()


def test_a_member_that_does_not_answer_at_open_comes_in_later(clock: Clock) -> None:
    """A member hung while opening does not keep the cluster from opening: it is suspect,
    and once its open returns the monitor brings it up to date and re-admits it."""
    a, b = FakeMember("a"), FakeMember("b")
    b.hang()
    cluster = Cluster([a, b], deadline_ms=100, monitor=False, clock=clock)
    cluster.open()
    try:
        assert cluster.state_of("b") is State.SUSPECT
        key = cluster.create_key()  # quorum 1: on a alone
        b.heal()
        for _ in range(1000):
            if cluster.health["b"].hung == 0:
                break
            threading.Event().wait(0.01)
        cluster.check_members()
        assert cluster.state_of("b") is State.HEALTHY
        assert (key.key_id, 1) in b.keys
    finally:
        b.heal()
        cluster.close()


def test_metrics_and_state_logs(three: Fakes, clock: Clock,
                                caplog: pytest.LogCaptureFixture) -> None:
    """Calls, errors, failovers, state and re-admissions show in the Prometheus registry;
    each state change is logged with structured fields."""
    from prometheus_client import generate_latest

    cluster, (a, _, _) = three
    caplog.set_level("INFO", logger="hsm.cluster")
    key = cluster.create_key()
    a.fail()
    gdk(cluster, key.key_id, CTX)
    a.heal()
    clock.now += 10
    cluster.check_members()
    text = generate_latest(cluster.metrics.registry).decode()
    assert 'hsm_member_calls_total{member="m0",operation="generate_data_key"} 1.0' in text
    assert 'hsm_member_calls_total{member="m1",operation="generate_data_key"} 1.0' in text
    assert 'hsm_member_errors_total{kind="transient",member="m0"} 1.0' in text
    assert 'hsm_member_failovers_total{member="m0"} 1.0' in text
    assert 'hsm_member_readmissions_total{member="m0"} 1.0' in text
    assert 'hsm_member_state{member="m0"} 0.0' in text
    events = [r for r in caplog.records if getattr(r, "hsm_event", "") == "member_state"]
    assert [(r.__dict__["old"], r.__dict__["new"]) for r in events] == [
        ("healthy", "down"), ("down", "healthy")]
    assert cluster.counters("m0")["calls"] >= 2


# -- the seam: an operation is a call on a member's keyring -------------------------------


def test_generate_random_goes_through_the_seam_and_fails_over(
    three: Fakes,
) -> None:
    """``generate_random`` is a call on a keyring with an Operation: it fails over like any
    idempotent call, with no method for it in the cluster."""
    cluster, (a, b, _) = three
    assert len(cluster.call(Operation.RANDOM, lambda ring: ring.generate_random(16))) == 16
    a.fail()
    assert len(cluster.call(Operation.RANDOM, lambda ring: ring.generate_random(8))) == 8
    assert b.calls["generate_random"] == 1
    assert cluster.state_of("m0") is State.DOWN


def test_a_state_changing_call_is_not_repeated_elsewhere(
    three: Fakes,
) -> None:
    """A call whose Operation is not idempotent (create) raises the first member's error
    and never reaches another member."""
    cluster, (a, b, c) = three
    a.fail()
    with pytest.raises(hsm.HSMUnavailable):
        cluster.call(Operation.CREATE_KEY, lambda ring: ring.create_key())
    assert b.calls["create_key"] == c.calls["create_key"] == 0


def test_describe_goes_to_the_member_asked_under_the_deadline(
    three: Fakes,
) -> None:
    """``describe`` runs on the member named, through the same seam; a hung member answers
    with a deadline error instead of hanging the caller, and turns suspect."""
    cluster, (a, b, _) = three
    info = cluster.call_on(b, Operation.DESCRIBE, lambda ring: ring.describe())
    assert info["token_label"] == "m1"
    assert a.calls["describe"] == 0
    a.hang()
    try:
        with pytest.raises(hsm.HSMUnavailable) as caught:
            cluster.call_on(a, Operation.DESCRIBE, lambda ring: ring.describe())
        assert caught.value.reason is Reason.DEADLINE
        assert cluster.state_of("m0") is State.SUSPECT
    finally:
        a.heal()


def test_the_cluster_has_no_method_per_operation() -> None:
    """Routing knows no operation: the cluster offers the seam, placement and reports, and
    none of the keyring's data calls."""
    for name in ("generate_data_key", "wrap", "unwrap", "encrypt_direct", "decrypt_direct",
                 "generate_random", "list_keys", "key_info", "describe"):
        assert not hasattr(Cluster, name), name


def test_every_operation_says_whether_it_may_be_repeated() -> None:
    """Exactly the state changes that are not idempotent (create, destroy) are never
    repeated; import changes state but is idempotent."""
    assert {op for op in Operation if not op.idempotent} == {Operation.CREATE_KEY,
                                                             Operation.DESTROY_KEY}
    assert {op for op in Operation if op.changes_state} == {
        Operation.CREATE_KEY, Operation.DESTROY_KEY, Operation.IMPORT_KEY}


def test_a_closed_cluster_says_so(clock: Clock) -> None:
    """A call on a cluster that is not open is refused with ``not_open``, for one member
    and for several."""
    for n in (1, 2):
        cluster = Cluster([FakeMember(f"m{i}") for i in range(n)], monitor=False, clock=clock)
        with pytest.raises(hsm.OperationFailed) as caught:
            cluster.call(Operation.RANDOM, lambda ring: ring.generate_random(1))
        assert caught.value.reason is Reason.NOT_OPEN


# -- hardening: quorum after a heal, orphans, resync, who was asked ------------------------


def test_create_right_after_a_heal_probes_the_member_now(clock: Clock) -> None:
    """A quorum create right after a member healed does not wait for the probe backoff:
    down members are probed (and brought up to date) before quorum is refused."""
    members = [FakeMember(f"m{i}") for i in range(3)]
    cluster = Cluster(members, quorum=3, monitor=False, clock=clock)
    cluster.open()
    try:
        members[0].fail()
        cluster.call(Operation.RANDOM, lambda ring: ring.generate_random(1))
        assert cluster.state_of("m0") is State.DOWN
        cluster.health["m0"].next_probe = clock.now + 3600  # the backoff is far away
        members[0].heal()
        key = cluster.create_key()
        assert all((key.key_id, 1) in m.keys for m in members)
        members[1].fail()
        with pytest.raises(hsm.QuorumNotReached):
            cluster.create_key()  # still refused when a member really is down
    finally:
        for m in members:
            m.heal()
        cluster.close()


def test_verify_counts_a_member_that_is_back(three: Fakes, clock: Clock) -> None:
    """verify probes down members first: one that healed is reachable, not drift."""
    cluster, (a, _b, _c) = three
    cluster.create_key()
    a.fail()
    cluster.call(Operation.RANDOM, lambda ring: ring.generate_random(1))
    cluster.health["m0"].next_probe = clock.now + 3600
    a.heal()
    report = cluster.verify()
    assert report.ok, report.as_dict()


def test_an_orphan_is_reported_never_copied_and_removable(three: Fakes) -> None:
    """A key only one member holds (below quorum) is an orphan: verify says so and how to
    remove it, resync never copies it, and resync --destroy-orphans removes it."""
    cluster, (a, b, c) = three
    good = cluster.create_key()
    orphan = a.keyring.create_key()  # as if a create had timed out after the first member
    report = cluster.verify()
    assert not report.ok
    assert report.members[0].orphans == [(orphan.key_id, 1)]
    assert not report.members[1].missing  # an orphan is not "missing" elsewhere
    assert any("--destroy-orphans" in hint for hint in report.hints)
    done = cluster.repair()
    assert all(not refs for refs in done["copied"].values())
    assert (orphan.key_id, 1) not in b.keys
    assert (orphan.key_id, 1) not in c.keys
    done = cluster.repair(destroy_orphans=True)
    assert done["destroyed"] == {"m0": [(orphan.key_id, 1)]}
    assert (orphan.key_id, 1) not in a.keys
    assert (good.key_id, 1) in a.keys
    assert cluster.verify().ok


def test_resync_repairs_drift_and_verify_says_to_run_it(three: Fakes) -> None:
    """A key that reached quorum while a member was away shows as missing there, verify
    says to run resync, and resync copies it."""
    cluster, (_a, _b, c) = three
    c.fail()
    cluster.call(Operation.RANDOM, lambda ring: ring.generate_random(1))
    key = cluster.create_key()  # on m0 and m1
    c.heal()
    cluster.health["m2"].next_probe = float("inf")  # no probe: drift stays for verify
    cluster.router.health["m2"].readmitted()  # back, but nobody brought it up to date
    report = cluster.verify()
    assert report.members[2].missing == [(key.key_id, 1)]
    assert any("hsm cluster resync" in hint for hint in report.hints)
    done = cluster.repair("m2")
    assert done["copied"] == {"m2": [(key.key_id, 1)]}
    assert cluster.verify().ok
    with pytest.raises(hsm.ConfigError):
        cluster.repair("no-such-member")


def test_an_unknown_key_names_every_member_asked(three: Fakes) -> None:
    """A key no member holds: KeyNotFound names every member that was asked."""
    cluster, _ = three
    with pytest.raises(hsm.KeyNotFound) as caught:
        gdk(cluster, "00000000-0000-4000-8000-000000000000", CTX)
    assert "asked m0, m1, m2" in str(caught.value)


def test_verify_reports_keys_weaker_than_the_template(three: Fakes) -> None:
    """A key whose attributes grant more than the template is reported, with what is
    wrong, and verify is not ok."""
    cluster, (a, _b, _c) = three
    key = cluster.create_key()
    a.weak.add((key.key_id, 1))
    report = cluster.verify()
    assert not report.ok
    assert report.members[0].weak == [((key.key_id, 1), ["WEAK (set by the test)"])]
