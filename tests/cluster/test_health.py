"""Member health: breaker states over an injected clock, no sleeping."""

from __future__ import annotations

from hsm.cluster.health import Health, State, Transition
from hsm.errors import Reason


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def state(health: Health) -> State:
    return health.state  # read through a call: mypy would keep the narrowed type


def test_down_probe_backoff_and_readmission() -> None:
    """A transient error takes a member down; probes back off exponentially up to a cap;
    re-admission resets it."""
    clock = Clock()
    changes: list[Transition] = []
    health = Health("a", clock=clock, probe_interval=1.0, max_probe_interval=4.0,
                    on_change=changes.append)
    health.failed(Reason.DEVICE_ERROR)
    assert health.state is State.DOWN
    assert not health.probe_due()
    clock.now += 1.0
    assert health.probe_due()
    health.probe_failed(Reason.DEVICE_ERROR)  # next in 2 s
    clock.now += 1.9
    assert not health.probe_due()
    clock.now += 0.1
    assert health.probe_due()
    health.probe_failed(Reason.DEVICE_ERROR)  # 4 s
    health.probe_failed(Reason.DEVICE_ERROR)  # capped at 4 s
    clock.now += 4.0
    assert health.probe_due()
    health.readmitted()
    assert state(health) is State.HEALTHY
    assert [(c.old, c.new) for c in changes] == [(State.HEALTHY, State.DOWN),
                                                 (State.DOWN, State.HEALTHY)]
    assert all(isinstance(c, Transition) for c in changes)


def test_a_hung_call_makes_a_member_suspect_until_it_returns() -> None:
    """Past the deadline a member is suspect; once every hung call has returned well its
    probe is due at once (it is brought up to date before it serves again), and it goes
    down if the late answer was an error."""
    health = Health("a", clock=Clock())
    health.timed_out()
    health.timed_out()
    assert state(health) is State.SUSPECT
    assert not health.serving
    assert not health.probe_due()
    health.hung_call_returned(None)
    assert state(health) is State.SUSPECT
    assert not health.probe_due()
    health.hung_call_returned(None)
    assert state(health) is State.SUSPECT
    assert health.probe_due()
    health.readmitted()
    assert state(health) is State.HEALTHY
    health.timed_out()
    health.hung_call_returned(Reason.DEVICE_ERROR)
    assert state(health) is State.DOWN


def test_a_disabled_member_is_never_probed() -> None:
    """A disabled member (PIN refused) is never due for a probe and ignores later errors
    and answers."""
    clock = Clock()
    health = Health("a", clock=clock)
    health.disabled(Reason.PIN_INCORRECT)
    for _ in range(3):
        clock.now += 1000
        health.failed(Reason.DEVICE_ERROR)
        health.readmitted()
        assert not health.probe_due()
        assert not health.probe_due(now=True)
    assert state(health) is State.DISABLED
