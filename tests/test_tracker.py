"""OffsetTracker: unit tests per method, plus a stateful model of fetch/settle/commit/revoke."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
)

from kafcel.bridge import tracker as tracker_module
from kafcel.bridge.tracker import TP, OffsetTracker

A: TP = ("tasks", 0)
B: TP = ("tasks", 1)

pytestmark = pytest.mark.timeout(60)


def tracker_with(tp: TP, *offsets: int) -> OffsetTracker:
    t = OffsetTracker()
    for o in offsets:
        assert t.add(tp, o)
    return t


# -- add ------------------------------------------------------------------------------


def test_add_new_offsets_in_order() -> None:
    t = OffsetTracker()
    assert t.add(A, 5)
    assert t.add(A, 6)
    assert t.add(A, 9)  # gaps happen: compaction, transaction markers
    assert t.in_flight(A) == 3
    assert t.lowest_unsettled(A) == 5


def test_add_duplicate_in_flight_is_rejected_and_changes_nothing() -> None:
    t = tracker_with(A, 5, 6)
    assert not t.add(A, 6)
    assert not t.add(A, 5)
    assert t.in_flight() == 2
    assert t.committable(A) == 5


def test_add_refetch_of_settled_offset_is_rejected() -> None:
    t = tracker_with(A, 5, 6, 7)
    t.settle(A, 5)
    t.settle(A, 6)
    assert not t.add(A, 5)  # below the low mark
    assert not t.add(A, 6)
    assert t.in_flight(A) == 1
    assert t.committable(A) == 7


def test_add_below_committed_mark_is_rejected() -> None:
    t = tracker_with(A, 10)
    t.settle(A, 10)
    t.mark_committed(A, 11)
    assert not t.add(A, 10)
    assert t.add(A, 11)


def test_add_after_revoke_restarts_from_committed_offset() -> None:
    t = tracker_with(A, 0, 1, 2)
    t.settle(A, 0)
    assert t.revoke(A) == 1
    assert t.add(A, 1)  # the re-read after reassign
    assert t.add(A, 2)
    assert t.committable(A) == 1
    assert t.in_flight() == 2


def test_add_negative_offset_raises() -> None:
    with pytest.raises(ValueError):
        OffsetTracker().add(A, -1001)


def test_partitions_are_independent() -> None:
    t = OffsetTracker()
    assert t.add(A, 100)
    assert t.add(B, 3)
    assert t.add(B, 4)
    t.settle(B, 3)
    assert t.committable(A) == 100
    assert t.committable(B) == 4
    assert t.in_flight(A) == 1
    assert t.in_flight(B) == 1
    assert t.in_flight() == 2


# -- settle -----------------------------------------------------------------------------


def test_settle_is_true_once_then_idempotent() -> None:
    t = tracker_with(A, 1, 2)
    assert t.settle(A, 2)
    assert not t.settle(A, 2)
    assert t.in_flight(A) == 1
    assert t.committable(A) == 1


def test_settle_unknown_does_nothing() -> None:
    t = tracker_with(A, 1)
    assert not t.settle(B, 1)
    assert not t.settle(A, 0)
    assert not t.settle(A, 2)
    assert t.partitions() == [A]
    assert t.in_flight() == 1


def test_settle_after_revoke_is_ignored() -> None:
    t = tracker_with(A, 1)
    t.revoke(A)
    assert not t.settle(A, 1)
    assert t.in_flight() == 0
    assert t.partitions() == []


# -- committable / lowest_unsettled -----------------------------------------------------


def test_committable_none_before_any_add() -> None:
    t = OffsetTracker()
    assert t.committable(A) is None
    assert t.lowest_unsettled(A) is None


def test_committable_stops_at_lowest_unsettled() -> None:
    t = tracker_with(A, 3, 4, 5, 6)
    t.settle(A, 4)
    t.settle(A, 6)
    assert t.committable(A) == 3
    t.settle(A, 3)
    assert t.committable(A) == 5
    assert t.lowest_unsettled(A) == 5
    t.settle(A, 5)
    assert t.committable(A) == 7
    assert t.lowest_unsettled(A) is None


def test_committable_all_settled_is_high_plus_one_across_gaps() -> None:
    t = tracker_with(A, 3, 8, 20)
    for o in (20, 3, 8):
        t.settle(A, o)
    assert t.committable(A) == 21


# -- pending_commits / mark_committed ---------------------------------------------------


def test_pending_commits_and_mark() -> None:
    t = tracker_with(A, 0, 1)
    t.add(B, 7)
    assert t.pending_commits() == {A: 0, B: 7}
    t.mark_committed(A, 0)
    t.mark_committed(B, 7)
    assert t.pending_commits() == {}
    t.settle(A, 0)
    assert t.pending_commits() == {A: 1}
    t.mark_committed(A, 1)
    t.settle(A, 1)
    t.settle(B, 7)
    assert t.pending_commits() == {A: 2, B: 8}


def test_mark_committed_keeps_the_highest() -> None:
    t = tracker_with(A, 0, 1, 2)
    for o in (0, 1, 2):
        t.settle(A, o)
    t.mark_committed(A, 3)
    t.mark_committed(A, 1)  # an older async commit completing late
    assert t.pending_commits() == {}


def test_mark_committed_on_untracked_partition_is_ignored() -> None:
    t = OffsetTracker()
    t.mark_committed(A, 50)
    assert t.partitions() == []
    assert t.pending_commits() == {}
    assert t.add(A, 10)  # no stale mark blocks a later assignment


def test_mark_committed_negative_raises() -> None:
    with pytest.raises(ValueError):
        tracker_with(A, 0).mark_committed(A, -1)


# -- revoke / in_flight / partitions ----------------------------------------------------


def test_revoke_returns_committable_and_forgets() -> None:
    t = tracker_with(A, 4, 5, 6)
    t.add(B, 0)
    t.settle(A, 4)
    t.settle(A, 6)
    t.mark_committed(A, 5)
    assert t.revoke(A) == 5
    assert t.partitions() == [B]
    assert t.in_flight() == 1
    assert t.in_flight(A) == 0
    assert t.committable(A) is None
    assert t.revoke(A) is None
    assert t.pending_commits() == {B: 0}


def test_partitions_sorted() -> None:
    t = OffsetTracker()
    t.add(("z", 0), 0)
    t.add(("a", 2), 0)
    t.add(("a", 1), 0)
    assert t.partitions() == [("a", 1), ("a", 2), ("z", 0)]


def test_in_flight_unknown_partition_is_zero() -> None:
    assert OffsetTracker().in_flight(A) == 0
    assert OffsetTracker().in_flight() == 0


# -- scale ------------------------------------------------------------------------------


@pytest.mark.timeout(30)  # quadratic bookkeeping would take minutes here
def test_100k_in_flight_random_settle_order_is_fast() -> None:
    n = 100_000
    rng = random.Random(7)
    t = OffsetTracker()
    for o in range(n):
        t.add(A, o)
    order = list(range(1, n))
    rng.shuffle(order)
    for o in order:
        assert t.settle(A, o)
        assert t.committable(A) == 0
    assert t.in_flight() == 1
    t.settle(A, 0)
    assert t.committable(A) == n


def test_stuck_head_does_not_keep_settled_offsets() -> None:
    # One slow task at the head while a fast partition keeps flowing behind it.
    t = tracker_with(A, 0)
    for o in range(1, 50_000):
        t.add(A, o)
        t.settle(A, o)
    assert t.committable(A) == 0
    part = t._parts[A]
    assert len(part.order) <= 2 * len(part.unsettled) + 64
    t.settle(A, 0)
    assert t.committable(A) == 50_000


# -- stateful model ---------------------------------------------------------------------

PARTS: list[TP] = [("tasks", 0), ("tasks", 1), ("other", 0)]


class TrackerMachine(RuleBasedStateMachine):
    """A consumer reading partitions whose records settle in any order.

    The model keeps a per-partition log (with gaps), the group's committed offset (which
    survives revokes), and which records ever settled. The tracker must never let the group
    commit past a record that has not settled in some assignment.
    """

    def __init__(self) -> None:
        super().__init__()
        # Rebuild the deque on every out-of-order settle, so that short runs check compaction
        # too (by default it only kicks in past 64 stale entries).
        self.saved_slack = tracker_module._COMPACT_SLACK
        tracker_module._COMPACT_SLACK = -(10**9)
        self.t = OffsetTracker()
        self.log: dict[TP, list[int]] = {tp: [] for tp in PARTS}
        self.group_committed: dict[TP, int] = {tp: 0 for tp in PARTS}
        self.ever_settled: dict[TP, set[int]] = {tp: set() for tp in PARTS}
        self.assigned: dict[TP, bool] = {tp: False for tp in PARTS}
        self.position: dict[TP, int] = {tp: 0 for tp in PARTS}  # index into log
        self.fetched: dict[TP, list[int]] = {tp: [] for tp in PARTS}  # since assignment
        self.unsettled: dict[TP, set[int]] = {tp: set() for tp in PARTS}
        self.marked: dict[TP, int] = {tp: -1 for tp in PARTS}
        self.last_committable: dict[TP, int | None] = {tp: None for tp in PARTS}

    @initialize(data=st.data())
    def assign_some(self, data: st.DataObject) -> None:
        for tp in PARTS:
            if data.draw(st.booleans(), label=f"assign {tp}"):
                self._assign(tp)

    def teardown(self) -> None:
        tracker_module._COMPACT_SLACK = self.saved_slack

    # helpers

    def _assign(self, tp: TP) -> None:
        self.assigned[tp] = True
        committed = self.group_committed[tp]
        log = self.log[tp]
        self.position[tp] = next((i for i, o in enumerate(log) if o >= committed), len(log))
        self.fetched[tp] = []
        self.unsettled[tp] = set()
        self.marked[tp] = -1
        self.last_committable[tp] = None

    def _commit(self, tp: TP, offset: int) -> None:
        assert offset >= self.group_committed[tp], "commit would move the group backwards"
        self.group_committed[tp] = offset

    # rules

    @rule(tp=st.sampled_from(PARTS), n=st.integers(1, 8), gaps=st.lists(st.integers(0, 3)))
    def fetch(self, tp: TP, n: int, gaps: list[int]) -> None:
        if not self.assigned[tp]:
            return
        log = self.log[tp]
        for i in range(n):
            if self.position[tp] == len(log):
                gap = gaps[i] if i < len(gaps) else 0
                log.append((log[-1] + 1 if log else 0) + gap)
            offset = log[self.position[tp]]
            self.position[tp] += 1
            assert self.t.add(tp, offset)
            self.fetched[tp].append(offset)
            self.unsettled[tp].add(offset)

    @rule(tp=st.sampled_from(PARTS), data=st.data())
    def refetch(self, tp: TP, data: st.DataObject) -> None:
        if not self.fetched[tp]:
            return
        offset = data.draw(st.sampled_from(self.fetched[tp]))
        assert not self.t.add(tp, offset)

    @rule(tp=st.sampled_from(PARTS), data=st.data())
    def settle(self, tp: TP, data: st.DataObject) -> None:
        if not self.unsettled[tp]:
            return
        offset = data.draw(st.sampled_from(sorted(self.unsettled[tp])))
        assert self.t.settle(tp, offset)
        self.unsettled[tp].discard(offset)
        self.ever_settled[tp].add(offset)

    @rule(tp=st.sampled_from(PARTS), data=st.data())
    def settle_again(self, tp: TP, data: st.DataObject) -> None:
        settled = [o for o in self.fetched[tp] if o not in self.unsettled[tp]]
        if not settled:
            return
        assert not self.t.settle(tp, data.draw(st.sampled_from(settled)))

    @rule(tp=st.sampled_from(PARTS), offset=st.integers(0, 200))
    def settle_unknown(self, tp: TP, offset: int) -> None:
        expected = offset in self.unsettled[tp]
        assert self.t.settle(tp, offset) == expected
        if expected:
            self.unsettled[tp].discard(offset)
            self.ever_settled[tp].add(offset)

    @rule(data=st.data())
    def commit(self, data: st.DataObject) -> None:
        pending = self.t.pending_commits()
        for tp, offset in pending.items():
            assert self.assigned[tp]
            assert offset > self.marked[tp]
            if data.draw(st.booleans(), label=f"commit {tp} succeeds"):
                self._commit(tp, offset)
                self.t.mark_committed(tp, offset)
                self.marked[tp] = max(self.marked[tp], offset)

    @rule(tp=st.sampled_from(PARTS), back=st.integers(0, 5))
    def late_commit_callback(self, tp: TP, back: int) -> None:
        # An older commit acknowledged after a newer one, or after the partition left us.
        if self.assigned[tp]:
            if self.marked[tp] < 0:
                return
            offset = max(0, self.marked[tp] - back)
        else:
            offset = self.group_committed[tp] + back
        before = self.t.pending_commits()
        self.t.mark_committed(tp, offset)
        assert self.t.pending_commits() == before
        assert self.t.partitions() == sorted(p for p in PARTS if self.fetched[p])

    @rule(tp=st.sampled_from(PARTS))
    def revoke(self, tp: TP) -> None:
        if not self.assigned[tp]:
            assert self.t.revoke(tp) is None
            return
        expected = self.t.committable(tp)
        offset = self.t.revoke(tp)
        assert offset == expected
        if offset is not None:
            self._commit(tp, offset)  # the synchronous commit on revoke
        self.assigned[tp] = False
        self.fetched[tp] = []
        self.unsettled[tp] = set()

    @rule(tp=st.sampled_from(PARTS))
    def reassign(self, tp: TP) -> None:
        if not self.assigned[tp]:
            self._assign(tp)

    # invariants

    @invariant()
    def counts_match(self) -> None:
        assert self.t.in_flight() == sum(len(u) for u in self.unsettled.values())
        for tp in PARTS:
            assert self.t.in_flight(tp) == len(self.unsettled[tp])

    @invariant()
    def partitions_match(self) -> None:
        assert self.t.partitions() == sorted(tp for tp in PARTS if self.fetched[tp])

    @invariant()
    def committable_is_safe(self) -> None:
        for tp in PARTS:
            c = self.t.committable(tp)
            unsettled = self.unsettled[tp]
            if not self.fetched[tp]:
                assert c is None
                continue
            assert c is not None
            assert all(c <= o for o in unsettled), "committable passes an unsettled record"
            assert c >= self.group_committed[tp], "committable below the committed offset"
            if unsettled:
                assert c == min(unsettled)
                assert self.t.lowest_unsettled(tp) == min(unsettled)
            else:
                assert c == max(self.fetched[tp]) + 1
                assert self.t.lowest_unsettled(tp) is None
            previous = self.last_committable[tp]
            assert previous is None or c >= previous, "committable went backwards"
            self.last_committable[tp] = c

    @invariant()
    def nothing_committed_past_an_unsettled_record(self) -> None:
        # Across revokes: every record below the group's offset settled in some assignment.
        for tp in PARTS:
            committed = self.group_committed[tp]
            for offset in self.log[tp]:
                if offset >= committed:
                    break
                assert offset in self.ever_settled[tp], f"{tp}@{offset} lost"

    @invariant()
    def pending_matches(self) -> None:
        expected: dict[TP, int] = {}
        for tp in PARTS:
            c = self.t.committable(tp)
            if c is not None and c > self.marked[tp]:
                expected[tp] = c
        assert self.t.pending_commits() == expected


TrackerMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_tracker_machine = TrackerMachine.TestCase


def test_skip_to_lets_the_commit_pass_offsets_that_hold_no_record() -> None:
    """Apache Kafka's transaction markers and aborted records are never delivered: the
    consumer's position past them is where the commit may go."""
    t = OffsetTracker()
    tp0 = ("t", 0)
    t.add(tp0, 0)
    t.add(tp0, 1)
    t.skip_to(tp0, 5)  # 2 is a commit marker, 3..4 an aborted transaction
    assert t.committable(tp0) == 0
    t.settle(tp0, 0)
    t.settle(tp0, 1)
    assert t.committable(tp0) == 5
    assert not t.add(tp0, 4)
    assert t.add(tp0, 5)
    t.skip_to(tp0, 3)  # behind what was added: nothing changes
    assert t.committable(tp0) == 5
    other = ("t", 9)
    t.skip_to(other, 7)  # only markers since the assignment
    assert t.committable(other) == 7 and t.in_flight(other) == 0
