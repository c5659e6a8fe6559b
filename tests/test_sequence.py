"""Offset-gap detection (pure logic): never step over a record that is not visible yet."""

from __future__ import annotations

import pytest

from kafcel.bridge.sequence import SequenceGuard

TP = ("t", 0)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make(wait_s: float = 1.0) -> tuple[SequenceGuard, list[tuple[tuple[str, int], int]], Clock]:
    seeks: list[tuple[tuple[str, int], int]] = []
    clock = Clock()
    guard = SequenceGuard(
        seek=lambda tp, off: seeks.append((tp, off)) or True, gap_wait_s=wait_s, clock=clock
    )
    return guard, seeks, clock


def test_in_order_offsets_pass() -> None:
    guard, seeks, _ = make()
    assert all(guard.admit(TP, o) for o in range(5))
    assert seeks == []


def test_a_gap_seeks_back_and_the_late_record_is_processed_first() -> None:
    guard, seeks, clock = make()
    guard.expect(TP, 10)
    assert guard.admit(TP, 10)
    assert not guard.admit(TP, 12)  # 11 not visible yet
    assert seeks == [(TP, 11)]
    assert not guard.admit(TP, 13)  # rest of the same fetch is dropped, no second seek
    assert seeks == [(TP, 11)]
    clock.now += 0.1
    assert guard.admit(TP, 11)  # after the seek, 11 shows up
    assert guard.admit(TP, 12)
    assert guard.gaps_accepted == 0


def test_a_gap_that_never_fills_is_accepted_after_the_wait() -> None:
    guard, seeks, clock = make(wait_s=1.0)
    guard.expect(TP, 0)
    assert not guard.admit(TP, 2)
    for _ in range(5):
        clock.now += 0.1
        guard.tick()  # sent back every 50 ms, from the loop
        assert not guard.admit(TP, 2)
    assert len(seeks) == 6
    clock.now += 1.0
    guard.tick()
    assert guard.admit(TP, 2)
    assert guard.gaps_accepted == 1
    assert guard.admit(TP, 3)


def test_after_the_wait_only_the_first_record_after_a_seek_is_taken() -> None:
    """Records fetched since the last seek back are not the first visible past the gap:
    taking one of them would step over the records between."""
    guard, _, clock = make(wait_s=1.0)
    guard.expect(TP, 0)
    assert not guard.admit(TP, 2)
    clock.now += 0.5
    guard.tick()
    assert [guard.admit(TP, o) for o in (2, 3, 4)] == [False, False, False]
    clock.now += 1.0  # the wait is over, but 5 is not the first record past the gap
    assert not guard.admit(TP, 5)
    guard.tick()
    assert guard.admit(TP, 2)
    assert [guard.admit(TP, o) for o in (3, 4, 5)] == [True, True, True]


def test_a_quiet_partition_is_sent_back_by_the_loop() -> None:
    """Nothing more to deliver: the loop's tick, not a new record, looks again."""
    guard, seeks, clock = make(wait_s=1.0)
    guard.expect(TP, 0)
    assert not guard.admit(TP, 2)
    assert seeks == [(TP, 0)]
    guard.tick()  # within 50 ms of the last seek
    assert seeks == [(TP, 0)]
    clock.now += 0.06
    guard.tick()
    assert seeks == [(TP, 0), (TP, 0)]
    assert guard.admit(TP, 0)  # it showed up
    clock.now += 1.0
    guard.tick()
    assert len(seeks) == 2


def test_records_before_the_expected_offset_are_dropped() -> None:
    guard, _, _ = make()
    guard.expect(TP, 5)
    assert not guard.admit(TP, 4)
    assert guard.admit(TP, 5)


def test_zero_wait_takes_gaps_at_once_without_a_seek() -> None:
    """Apache Kafka: a jump is a gap that holds no record (transaction markers,
    compaction); nothing is held back and nothing re-read."""
    guard, seeks, _ = make(wait_s=0.0)
    guard.expect(TP, 0)
    assert guard.admit(TP, 3)
    assert guard.admit(TP, 4)
    assert guard.admit(TP, 9)
    guard.tick()
    assert seeks == []
    assert guard.gaps_accepted == 2
    assert guard.waited_s == 0
    assert not guard.admit(TP, 4)  # still never twice


def test_first_record_after_forget_sets_the_sequence() -> None:
    guard, _, _ = make()
    guard.expect(TP, 0)
    guard.forget(TP)
    assert guard.admit(TP, 40)
    assert guard.admit(TP, 41)


def test_negative_wait_is_refused() -> None:
    with pytest.raises(ValueError):
        SequenceGuard(seek=lambda tp, off: None, gap_wait_s=-1)


def test_the_time_partitions_wait_on_gaps_is_counted() -> None:
    guard, _, clock = make(wait_s=1.0)
    guard.expect(TP, 0)
    guard.expect(("t", 1), 0)
    assert not guard.admit(TP, 2)
    clock.now += 0.25
    assert guard.waited_s == pytest.approx(0.25)  # an open gap counts as it goes
    assert guard.admit(TP, 0)  # the missing record showed up
    assert not guard.admit(("t", 1), 5)
    clock.now += 1.0
    guard.tick()
    assert guard.admit(("t", 1), 5)  # taken as legitimate after the wait
    clock.now += 3.0
    assert guard.waited_s == pytest.approx(1.25)
    assert not guard.admit(TP, 9)
    clock.now += 0.5
    guard.forget(TP)  # revoked while waiting: the wait still counted
    assert guard.waited_s == pytest.approx(1.75)


def test_after_a_failed_reseek_the_next_record_is_not_taken_as_past_the_gap() -> None:
    seeks_ok = [True]
    clock = Clock()
    guard = SequenceGuard(seek=lambda tp, off: seeks_ok[0], gap_wait_s=1.0, clock=clock)
    guard.expect(TP, 0)
    assert not guard.admit(TP, 2)
    clock.now += 2.0
    seeks_ok[0] = False
    guard.tick()
    # Offset 5 may be a record fetched beyond the gap before the failed seek: 2..4 were
    # never seen, so it must not be taken.
    assert not guard.admit(TP, 5)
    seeks_ok[0] = True
    clock.now += 0.1
    guard.tick()
    assert guard.admit(TP, 2)


def test_a_put_back_whose_seek_fails_stops_the_bridge() -> None:
    from confluent_kafka import KafkaException, Message

    from kafcel.bridge.sequence import put_back
    from kafcel.errors import KafkaError

    class Refusing:
        def seek(self, part: object) -> None:
            raise KafkaException("Local: Erroneous state")

    class Fetched:
        def error(self) -> None:
            return None

        def topic(self) -> str:
            return TP[0]

        def partition(self) -> int:
            return TP[1]

        def offset(self) -> int:
            return 7

    guard = SequenceGuard(seek=lambda tp, off: True, gap_wait_s=0)
    msgs: list[Message] = [Fetched()]  # type: ignore[list-item]
    with pytest.raises(KafkaError, match=r"t\[0\] again from offset 7"):
        put_back(Refusing(), guard, msgs)  # type: ignore[arg-type]
