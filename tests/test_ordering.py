"""The ordering gate: one unsettled task per slot, dispatch order = arrival order per slot."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kafcel.bridge.ordering import OrderingGate
from kafcel.errors import ConfigError

TP0 = ("t", 0)
TP1 = ("t", 1)


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(ConfigError, match="ordering must be one of"):
        OrderingGate[int](mode="sideways")


def test_slots_per_mode() -> None:
    assert OrderingGate[int](mode="key").slot_for(TP0, b"k") == (TP0, b"k")
    assert OrderingGate[int](mode="key").slot_for(TP0, None) is None
    assert OrderingGate[int](mode="partition").slot_for(TP0, b"k") == TP0
    assert OrderingGate[int](mode="none").slot_for(TP0, b"k") is None


def test_busy_key_waits_other_keys_run() -> None:
    gate = OrderingGate[str](mode="key")
    a, b = gate.slot_for(TP0, b"a"), gate.slot_for(TP0, b"b")
    assert gate.admit(a, "a1")
    assert not gate.admit(a, "a2")
    assert gate.admit(b, "b1")
    assert gate.waiting == 1 and gate.busy == 2
    assert gate.release(a) == "a2"
    assert gate.release(a) is None
    assert gate.release(b) is None
    assert gate.busy == 0 and gate.waiting == 0


def test_drop_forgets_revoked_partitions_only() -> None:
    gate = OrderingGate[str](mode="key")
    s0, s1 = gate.slot_for(TP0, b"a"), gate.slot_for(TP1, b"a")
    gate.admit(s0, "x")
    gate.admit(s0, "y")
    gate.admit(s1, "z")
    gate.drop([TP0])
    assert gate.busy == 1 and gate.waiting == 0
    assert gate.admit(s0, "again")


@settings(max_examples=200)
@given(
    mode=st.sampled_from(["key", "partition", "none"]),
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("add"), st.integers(0, 1), st.sampled_from([b"a", b"b", b"c", None])),
            st.tuples(st.just("settle"), st.integers(0, 50), st.none()),
        ),
        max_size=80,
    ),
)
def test_one_running_per_slot_and_arrival_order(
    mode: str, ops: list[tuple[str, int, bytes | None]]
) -> None:
    gate = OrderingGate[int](mode=mode)
    running: list[tuple[object, int]] = []
    dispatched: dict[object, list[int]] = {}
    arrived: dict[object, list[int]] = {}
    seq = 0
    for op, n, key in ops:
        if op == "add":
            slot = gate.slot_for(("t", n), key)
            seq += 1
            arrived.setdefault(slot, []).append(seq)
            if gate.admit(slot, seq):
                running.append((slot, seq))
                dispatched.setdefault(slot, []).append(seq)
        elif running:
            slot, _ = running.pop(n % len(running))
            nxt = gate.release(slot)
            if nxt is not None:
                running.append((slot, nxt))
                dispatched.setdefault(slot, []).append(nxt)
        for slot in {s for s, _ in running if s is not None}:
            assert sum(1 for s, _ in running if s == slot) == 1
    for slot, order in dispatched.items():
        if slot is not None:
            assert order == arrived[slot][: len(order)]
