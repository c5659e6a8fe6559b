"""Path B on real processes: a Celery worker started with ``--kafcel-consume`` reads the
task topic itself, no bridge, with the bridge path's guarantees."""

from __future__ import annotations

import pytest
import redis

from kafcel import Outcome, Producer

from .conftest import Pipeline, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

Ledger = tuple[str, "redis.Redis[bytes]"]


def counts(client: redis.Redis[bytes], key: str) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in client.hgetall(key).items()}


def outcomes_for(pipeline: Pipeline, n: int) -> dict[str, Outcome]:
    msgs = pipeline.read(
        pipeline.settings.results_topic,
        until=lambda got: len({Outcome.decode(m.value()).task_id for m in got}) >= n,
        timeout_s=120,
    )
    return {o.task_id: o for o in (Outcome.decode(m.value()) for m in msgs)}


@pytest.mark.parametrize("pool", ["prefork", "threads", "solo"])
def test_a_consuming_worker_runs_every_record_once_and_commits(
    pipeline: Pipeline, ledger: Ledger, pool: str
) -> None:
    name, client = ledger
    n = 200
    pipeline.start_consumer(pool=pool)
    ids: dict[str, int] = {}
    with Producer(settings=pipeline.settings) as producer:
        for i in range(n):
            ids[producer.submit("tests.app.record", args=[name, i], key=f"user-{i % 17}")] = i
    outcomes = outcomes_for(pipeline, n)
    assert all(outcomes[t].status == "SUCCESS" and outcomes[t].result == ids[t] for t in ids)
    wait_until(pipeline.fully_committed, 30, "offsets committed to the end")
    effects = counts(client, f"{name}:effects")
    assert len(effects) == n and set(effects.values()) == {1}
