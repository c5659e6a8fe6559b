"""The Tansu handling is chosen by what the broker is, and costs nothing on Apache Kafka."""

from __future__ import annotations

from kafcel.bridge.clients import consumer_config
from kafcel.bridge.sequence import guard
from kafcel.kafka.config import fetch_config
from kafcel.settings import Settings


def test_fetches_on_apache_kafka_are_answered_as_records_arrive() -> None:
    kafka = fetch_config(5, tansu=False)
    assert kafka["fetch.min.bytes"] == 1
    assert kafka["fetch.wait.max.ms"] == 500
    tansu = fetch_config(5, tansu=True)
    assert tansu["fetch.wait.max.ms"] == 5 and tansu["fetch.min.bytes"] == 1 << 20
    assert kafka["queued.max.messages.kbytes"] == tansu["queued.max.messages.kbytes"] == 8192


def test_outcome_fetches_wait_to_share_a_request_on_either_broker() -> None:
    for tansu in (False, True):
        conf = fetch_config(10, tansu=tansu, batch=True)
        assert conf["fetch.wait.max.ms"] == 10 and conf["fetch.min.bytes"] == 1 << 20


def test_the_task_consumer_reads_committed_records_only_whatever_the_user_set() -> None:
    s = Settings(kafka_config=("isolation.level=read_uncommitted", "fetch.wait.max.ms=100"))
    for tansu in (False, True):
        conf = consumer_config(s, lambda *_: None, tansu=tansu)
        assert conf["isolation.level"] == "read_committed"
        assert conf["fetch.wait.max.ms"] == "100"  # the user's own fetch settings win


def test_the_gap_wait_is_tansu_handling_only() -> None:
    seeks: list[tuple[tuple[str, int], int]] = []
    kafka = guard(lambda: None, gap_wait_s=2.0, tansu=False)
    kafka.expect(("t", 0), 0)
    assert kafka.admit(("t", 0), 3)  # a transaction marker's gap: taken at once
    assert kafka.waited_s == 0 and kafka.reseeks == 0
    tansu = guard(lambda: None, gap_wait_s=2.0, tansu=True)
    tansu._seek = lambda tp, off: seeks.append((tp, off))
    tansu.expect(("t", 0), 0)
    assert not tansu.admit(("t", 0), 3)  # looked into: N+1 may be visible before N
    assert seeks == [(("t", 0), 0)]
