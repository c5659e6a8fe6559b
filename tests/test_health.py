"""The lag evaluation (OK/WARN/STALL/STOP) as pure logic, with property tests."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kafcel.telemetry.health import OK, STALL, STATUSES, STOP, WARN, Report, Sample, evaluate, worst

pytestmark = pytest.mark.timeout(60)

WINDOW_S = 60.0
NOW_S = 10_000.0


def series(pairs: list[tuple[int, int]], every_s: float = 5.0) -> list[Sample]:
    """Samples (committed, end) ending just before now, ``every_s`` apart."""
    n = len(pairs)
    return [Sample(c, e, at_s=NOW_S - (n - i) * every_s) for i, (c, e) in enumerate(pairs)]


def test_caught_up_is_ok() -> None:
    samples = series([(0, 100)] * 12)
    assert evaluate(samples, current=Report(100, 100), now_s=NOW_S, window_s=WINDOW_S).status == OK


def test_zero_lag_within_the_window_is_ok_even_if_lag_is_back() -> None:
    samples = series([(10, 20), (20, 20), (20, 40)])
    verdict = evaluate(samples, current=Report(20, 50), now_s=NOW_S, window_s=WINDOW_S)
    assert verdict.status == OK


def test_offset_not_moving_with_lag_is_stall() -> None:
    samples = series([(5, 50)] * 14)
    verdict = evaluate(samples, current=Report(5, 50), now_s=NOW_S, window_s=WINDOW_S)
    assert verdict.status == STALL and "not moved" in verdict.reason


def test_moving_but_lag_rising_is_warn() -> None:
    samples = series([(i * 10, 100 + i * 20) for i in range(14)])
    verdict = evaluate(samples, current=Report(140, 400), now_s=NOW_S, window_s=WINDOW_S)
    assert verdict.status == WARN and "rising" in verdict.reason


def test_moving_with_lag_shrinking_is_ok() -> None:
    samples = series([(i * 10, 200) for i in range(14)])
    verdict = evaluate(samples, current=Report(120, 200), now_s=NOW_S, window_s=WINDOW_S)
    assert verdict.status == OK


def test_no_commit_report_for_longer_than_the_window_is_stop() -> None:
    old = [Sample(5, 50, at_s=NOW_S - WINDOW_S - 30 + i) for i in range(5)]
    verdict = evaluate(old, current=Report(5, 50), now_s=NOW_S, window_s=WINDOW_S)
    assert verdict.status == STOP
    never = evaluate([], current=Report(None, 3), now_s=NOW_S, window_s=WINDOW_S)
    assert never.status == STOP and "ever" in never.reason


def test_a_window_not_yet_full_is_not_judged() -> None:
    # Eleven reports over 55 s: a stall of 55 s in a 60 s window is not a stall yet.
    samples = series([(5, 50)] * 11)
    verdict = evaluate(samples, current=Report(5, 50), now_s=NOW_S, window_s=WINDOW_S)
    assert verdict.status == OK and "evaluating" in verdict.reason


def test_a_paused_partition_reports_without_a_lag() -> None:
    # Paused: the bridge's cached end is stale, so its reports carry none. They still
    # prove a live owner (no STOP), and cannot fake a zero lag (no "caught up").
    samples = series([(5, None)] * 14)
    verdict = evaluate(samples, current=Report(5, 50), now_s=NOW_S, window_s=WINDOW_S)
    assert verdict.status == STALL


def test_a_commit_held_by_a_scheduled_task_is_not_a_stall() -> None:
    samples = [*series([(5, 50)] * 13), Sample(5, 50, eta_held=True, at_s=NOW_S - 1)]
    verdict = evaluate(samples, current=Report(5, 50), now_s=NOW_S, window_s=WINDOW_S)
    assert verdict.status == OK and "eta" in verdict.reason


def test_no_committed_offset_yet_reads_as_such() -> None:
    samples = series([(None, 3)] * 14)
    verdict = evaluate(samples, current=Report(None, 3), now_s=NOW_S, window_s=WINDOW_S)
    assert verdict.status == STALL and "no offset committed yet" in verdict.reason


offsets = st.integers(min_value=0, max_value=1_000)
points = st.lists(st.tuples(offsets, st.none() | offsets), min_size=0, max_size=30)


@given(points, offsets, offsets, st.floats(min_value=1, max_value=600))
def test_evaluation_is_total_and_consistent(
    pairs: list[tuple[int, int | None]], committed: int, end: int, window_s: float
) -> None:
    samples = series(
        [(c, None if e is None else max(c, e)) for c, e in pairs], every_s=window_s / 10
    )
    current = Report(committed, max(end, committed))
    verdict = evaluate(samples, current=current, now_s=NOW_S, window_s=window_s)
    assert verdict.status in STATUSES and verdict.reason
    if current.lag == 0:
        assert verdict.status == OK
    if verdict.status in (STALL, WARN, STOP):
        assert current.lag > 0
    if verdict.status == STALL:
        assert all(s.committed == committed for s in samples if NOW_S - s.at_s <= window_s)
    if verdict.status == STOP:
        assert all(NOW_S - s.at_s > window_s for s in samples)


@given(st.lists(st.sampled_from(STATUSES)))
def test_worst_orders_ok_warn_stall_stop(statuses: list[str]) -> None:
    expected = max(statuses, key=STATUSES.index) if statuses else OK
    assert worst(statuses) == expected
