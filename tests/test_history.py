"""The history check on hand-written histories: each fault it must name, and only that."""

from __future__ import annotations

import uuid

import pytest

from kafcel.chaos.history import Effect, History, check
from kafcel.chaos.ledger import Ledger
from kafcel.dev import DevStack

pytestmark = [pytest.mark.timeout(10)]


def _effects(*triples: tuple[str, str, int]) -> list[Effect]:
    return [Effect(order=o, key=k, seq=s) for o, k, s in triples]


def test_a_clean_history_has_no_fault() -> None:
    submits = {"o1": "ok", "o2": "ok", "o3": "ok"}
    effects = _effects(("o1", "a", 0), ("o3", "b", 0), ("o2", "a", 1))
    assert check(submits, effects) == History(
        acknowledged=3, failed=0, unanswered=0, lost=0, duplicated=0, unexpected=0,
        out_of_order=0,
    )  # fmt: skip


def test_an_acknowledged_submit_without_effect_is_lost_a_failed_one_is_not() -> None:
    submits = {"o1": "ok", "o2": "fail", "o3": "sent"}
    h = check(submits, [])
    assert (h.lost, h.failed, h.unanswered) == (1, 1, 1)


def test_a_failed_submit_that_ran_anyway_is_neither_lost_nor_unexpected() -> None:
    # An idempotent producer's timed-out record may have been written after all.
    h = check({"o1": "fail"}, _effects(("o1", "a", 0)))
    assert (h.lost, h.unexpected, h.duplicated) == (0, 0, 0)


def test_an_effect_twice_is_a_duplicate_and_not_an_ordering_fault() -> None:
    h = check({"o1": "ok", "o2": "ok"}, _effects(("o1", "a", 0), ("o2", "a", 1), ("o1", "a", 0)))
    assert (h.duplicated, h.out_of_order) == (1, 0)


def test_an_order_applied_twice_still_orders_its_key_by_its_first_effect() -> None:
    # o2 (seq 2), then o1 (seq 1): out of order, whatever o2 does again afterwards.
    submits = {"o1": "ok", "o2": "ok"}
    h = check(submits, _effects(("o2", "a", 2), ("o1", "a", 1), ("o2", "a", 2)))
    assert (h.duplicated, h.out_of_order) == (1, 1)


def test_an_effect_of_a_task_never_submitted_is_unexpected() -> None:
    h = check({"o1": "ok"}, _effects(("o1", "a", 0), ("o9", "a", 1)))
    assert (h.unexpected, h.lost, h.out_of_order) == (1, 0, 0)


def test_a_lower_sequence_after_a_higher_one_on_a_key_is_out_of_order_once_per_key() -> None:
    submits = {f"o{i}": "ok" for i in range(5)}
    effects = _effects(
        ("o0", "a", 0), ("o2", "a", 2), ("o1", "a", 1),  # key a: 1 after 2
        ("o3", "b", 1), ("o4", "b", 0),  # key b: 0 after 1
    )  # fmt: skip
    assert check(submits, effects).out_of_order == 2


def test_the_ledgers_counters_and_its_history_agree(stack: DevStack) -> None:
    """The same effects through the real ledger script: both readings must say the same."""
    ledger = Ledger(url=stack.redis_url, run=f"h{uuid.uuid4().hex[:8]}")
    try:
        ledger.record_submits(["o0", "o1", "o2", "o3"], "sent")
        ledger.record_submits(["o0", "o1", "o2"], "ok")
        ledger.record_submits(["o3"], "fail")
        ledger.apply(task_id="t2", order="o2", key="a", seq=2)
        ledger.apply(task_id="t1", order="o1", key="a", seq=1)  # out of order on key a
        ledger.apply(task_id="t1", order="o1", key="a", seq=1)  # a rerun: no effect
        ledger.apply(task_id="t2b", order="o2", key="a", seq=2)  # a duplicate effect
        counts, history = ledger.counts(), ledger.history()
        assert (counts.duplicates, counts.out_of_order, counts.reruns) == (1, 1, 2)
        assert (history.duplicated, history.out_of_order) == (1, 1)
        assert (history.lost, history.failed, history.unexpected) == (1, 1, 0)  # o0
        assert ledger.failed_submits() == {"o3"}
    finally:
        ledger.clear()
        ledger.close()
