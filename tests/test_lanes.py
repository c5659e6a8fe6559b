"""Several task topics ("lanes"): a bridge or a consuming worker reads a list of topics
or a pattern, each lane with its own share of the in-flight budget and Celery queue."""

from __future__ import annotations

import urllib.request
from typing import Any

import pytest
import redis
from confluent_kafka import Producer as KafkaProducer

from kafcel import Outcome, Producer
from kafcel.dev import free_ports
from kafcel.errors import ConfigError
from kafcel.kafka.admin import ensure_topics
from kafcel.protocol.deadletter import parse_dlq_headers
from kafcel.settings import Settings

from .conftest import Pipeline, wait_until

Ledger = tuple[str, "redis.Redis[bytes]"]
_integration = [pytest.mark.integration, pytest.mark.timeout(240)]


# -- the settings ----------------------------------------------------------------------


@pytest.mark.timeout(10)
def test_each_lane_has_its_companions_queue_and_weights_share() -> None:
    s = Settings(
        topics=("jobs.urgent:3", "jobs.bulk"),
        lane_queues=("jobs.urgent=urgent",),
        max_in_flight=400,
        group_instance_id="b1",
    )
    weights = s.lane_topics([])
    assert weights == {"jobs.urgent": 3, "jobs.bulk": 1}
    urgent, bulk = (s.lane(t, weights=weights) for t in weights)
    assert (urgent.results_topic, urgent.dlq_topic, urgent.scheduled_topic) == (
        "jobs.urgent.results",
        "jobs.urgent.dlq",
        "jobs.urgent.scheduled",
    )
    assert (urgent.queue, bulk.queue) == ("urgent", "")
    assert (urgent.max_in_flight, bulk.max_in_flight) == (300, 100)
    # Static membership ids differ per member of the group.
    assert (urgent.group_instance_id, bulk.group_instance_id) == ("b1.jobs.urgent", "b1.jobs.bulk")


@pytest.mark.timeout(10)
def test_set_results_and_dlq_topics_are_shared_even_through_a_copy() -> None:
    s = Settings(topics=("a", "b"), results_topic="all.results", dlq_topic="all.dlq")
    s = s.replace(drain_timeout_s=5)  # as a consuming worker does before its lanes
    lanes = [s.lane(t, weights={"a": 1, "b": 1}) for t in ("a", "b")]
    assert {(lane.results_topic, lane.dlq_topic) for lane in lanes} == {("all.results", "all.dlq")}
    assert [lane.scheduled_topic for lane in lanes] == ["a.scheduled", "b.scheduled"]


@pytest.mark.timeout(10)
def test_a_pattern_matches_task_topics_not_their_companions() -> None:
    s = Settings(topics=(r"^jobs\..*:2", "other"), dlq_topic="jobs.dead")
    existing = [
        "jobs.urgent",
        "jobs.urgent.results",
        "jobs.urgent.dlq",
        "jobs.urgent.scheduled",
        "jobs.bulk",
        "jobs.dead",
        "__consumer_offsets",
        "elsewhere",
    ]
    assert s.lane_topics(existing) == {"other": 1, "jobs.bulk": 2, "jobs.urgent": 2}


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"topics": ("a", "a")}, "twice"),
        ({"topics": ("a b",)}, "not a topic name"),
        ({"topics": ("^(",)}, "not a valid pattern"),
        ({"topics": ("a:0",)}, "at least 1"),
        ({"topics": ("a", "b"), "scheduled_topic": "s"}, "cannot be shared"),
        ({"lane_queues": ("a",)}, "TOPIC=QUEUE"),
        ({"topics_refresh_s": 0}, "positive"),
    ],
)
def test_bad_lanes_are_refused_in_one_line(changes: dict[str, Any], says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        Settings(**changes)


# -- on the real stack -----------------------------------------------------------------


def _lanes(pipeline: Pipeline, *names: str) -> list[str]:
    topics = [f"{pipeline.settings.topic}.{name}" for name in names]
    ensure_topics(pipeline.settings.bootstrap_servers, dict.fromkeys(topics, 4))
    return topics


def _submit(pipeline: Pipeline, topic: str, task: str, args_of: Any, n: int) -> None:
    with Producer(settings=pipeline.settings.replace(topic=topic)) as producer:
        for i in range(n):
            producer.submit(task, args=args_of(i), key=f"k{i}")


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        return str(answer.read().decode())


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_a_bulk_backlog_fills_only_its_lanes_share_and_the_urgent_lane_runs_meanwhile(
    pipeline: Pipeline, ledger: Ledger
) -> None:
    """No worker serves the bulk lane's Celery queue at first: its records stay unsettled
    and the lane stops at its share of max_in_flight, while urgent tasks run at once."""
    name, client = ledger
    urgent, bulk = _lanes(pipeline, "urgent", "bulk")
    q_urgent, q_bulk = f"q-{urgent}", f"q-{bulk}"
    (port,) = free_ports(1)
    lanes = {
        "topics": (urgent, bulk),
        "lane_queues": (f"{urgent}={q_urgent}", f"{bulk}={q_bulk}"),
        "max_in_flight": 20,
        "metrics_port": port,
    }
    pipeline.start_worker(queue=q_urgent, **lanes)
    bridge = pipeline.start_bridge(**lanes)
    bridge.wait_for_log("kafcel bridge ready", timeout_s=60)
    _submit(pipeline, bulk, "tests.app.record", lambda i: [f"{name}-bulk", i], 200)
    # The bulk lane's share of 20 is 10: it pauses there (one record past it at most).
    wait_until(lambda: client.llen(q_bulk) >= 10, timeout_s=60, what="the bulk lane's share")
    _submit(pipeline, urgent, "tests.app.record", lambda i: [name, i], 30)
    wait_until(lambda: client.hlen(f"{name}:effects") == 30, timeout_s=60, what="urgent tasks")
    assert client.llen(q_bulk) <= 11
    assert client.hlen(f"{name}-bulk:effects") == 0
    wait_until(lambda: pipeline.fully_committed(urgent), timeout_s=30, what="urgent committed")
    # One /metrics for the process, in flight summed over the lanes.
    metrics = _scrape(port)
    in_flight = next(
        float(line.split()[1])
        for line in metrics.splitlines()
        if line.startswith("kafcel_in_flight ")
    )
    assert 10 <= in_flight <= 11

    pipeline.start_worker(queue=q_bulk, **lanes)
    wait_until(lambda: client.hlen(f"{name}-bulk:effects") == 200, timeout_s=120, what="bulk tasks")
    effects = client.hvals(f"{name}-bulk:effects") + client.hvals(f"{name}:effects")
    assert {int(v) for v in effects} == {1}  # each ran once
    wait_until(lambda: pipeline.fully_committed(bulk), timeout_s=30, what="bulk committed")
    # Both lanes' partitions in the lag series (a paused lane's end is not known).
    series = [f'kafcel_consumer_lag{{partition="0",topic="{t}"}}' for t in (urgent, bulk)]
    wait_until(
        lambda: all(line in _scrape(port) for line in series), timeout_s=30, what="lag series"
    )
    # Each lane's outcomes on its own results topic.
    for topic, n in ((urgent, 30), (bulk, 200)):
        got = pipeline.read(f"{topic}.results", until=lambda m, n=n: len(m) >= n)
        assert {Outcome.decode(m.value()).origin_topic for m in got} == {topic}


@pytest.mark.integration
@pytest.mark.both_paths
@pytest.mark.timeout(240)
def test_lanes_share_results_and_dlq_topics_when_those_are_set(
    pipeline: Pipeline, ledger: Ledger
) -> None:
    name, client = ledger
    a, b = _lanes(pipeline, "a", "b")
    results, dlq = f"{pipeline.settings.topic}.all.results", f"{pipeline.settings.topic}.all.dlq"
    ensure_topics(pipeline.settings.bootstrap_servers, {results: 4, dlq: 4})
    pipeline.start(topics=(a, b), results_topic=results, dlq_topic=dlq)
    for topic in (a, b):
        _submit(pipeline, topic, "tests.app.record", lambda i, t=topic: [name, f"{t}-{i}"], 25)
        raw = KafkaProducer({"bootstrap.servers": pipeline.settings.bootstrap_servers})
        raw.produce(topic, value=b"not json", key=b"bad")
        raw.flush(10)
    wait_until(lambda: client.hlen(f"{name}:effects") == 50, timeout_s=90, what="50 tasks")
    got = pipeline.read(results, until=lambda m: len(m) >= 50)
    assert {Outcome.decode(m.value()).origin_topic for m in got} == {a, b}
    letters = pipeline.read(dlq, until=lambda m: len(m) >= 2)
    origins = {parse_dlq_headers(m.headers())["origin.topic"] for m in letters}
    assert origins == {a, b}
    for topic in (a, b):
        wait_until(lambda t=topic: pipeline.fully_committed(t), timeout_s=30, what="committed")
    assert {int(v) for v in client.hvals(f"{name}:effects")} == {1}


@pytest.mark.integration
@pytest.mark.both_paths
@pytest.mark.timeout(240)
def test_a_pattern_reads_matching_topics_and_one_made_later(
    pipeline: Pipeline, ledger: Ledger
) -> None:
    name, client = ledger
    first, second = _lanes(pipeline, "first", "second")
    pattern = "^" + pipeline.settings.topic.replace("-", r"\-") + r"\..*"
    proc = pipeline.start(topics=(pattern,), topics_refresh_s=1.0, max_in_flight=30)
    for topic in (first, second):
        _submit(pipeline, topic, "tests.app.record", lambda i, t=topic: [name, f"{t}-{i}"], 10)
    wait_until(lambda: client.hlen(f"{name}:effects") == 20, timeout_s=90, what="20 tasks")
    (later,) = _lanes(pipeline, "later")
    proc.wait_for_log(f"lane {later}:", timeout_s=30)
    # The shares are divided anew: the process still holds at most max_in_flight.
    proc.wait_for_log(f"in-flight shares now: {first} 10, {later} 10, {second} 10", timeout_s=5)
    _submit(pipeline, later, "tests.app.record", lambda i: [name, f"later-{i}"], 10)
    wait_until(lambda: client.hlen(f"{name}:effects") == 30, timeout_s=90, what="30 tasks")
    # The lanes' own companions never became lanes.
    assert f"lane {first}.results" not in proc.log_path.read_text()
    for topic in (first, second, later):
        wait_until(lambda t=topic: pipeline.fully_committed(t), timeout_s=30, what="committed")


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_a_lane_that_cannot_start_stops_the_bridge_with_one_line(pipeline: Pipeline) -> None:
    good, bad = _lanes(pipeline, "good", "bad")
    # Outcomes go to the results partition numbered like the task's: too few is refused.
    ensure_topics(pipeline.settings.bootstrap_servers, {f"{bad}.results": 1})
    proc = pipeline.start_bridge(topics=(good, bad), wait_assigned=False)
    assert proc.proc is not None
    assert proc.proc.wait(timeout=60) != 0
    log = proc.log_path.read_text()
    assert f"the topic '{bad}.results' has 1 partitions" in log
    assert "Traceback" not in log
