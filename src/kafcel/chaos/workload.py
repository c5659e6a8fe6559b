"""What a chaos scenario submits: keyed orders, and for the poison scenario, poison.

Good orders are ``chaos.apply`` tasks numbered per key (the sequence the ledger checks).
Poison covers every way a record can be refused (bytes the bridge rejects) or fail for
good (a task that always raises, one that kills its own process); each is expected in the
DLQ exactly once.
"""

from __future__ import annotations

import json
import pickle
import random
import threading
import time
from dataclasses import dataclass, field

from confluent_kafka import Producer as KafkaProducer

from ..errors import DeliveryError
from ..kafka.config import client_config
from ..producer import Producer
from ..protocol.envelope import Envelope
from ..settings import Settings
from .history import FAIL, OK, SENT
from .ledger import Ledger

__all__ = ["POISON_KINDS", "Tally", "Workload", "make_workload", "submit"]

# The bridge refuses these before Celery sees them (max_record_bytes is set to 64 KiB).
POISON_KINDS: dict[str, bytes] = {
    "truncated-json": b'{"v": 1, "task": "chaos.apply", "args": [',
    "invalid-utf8": b'{"v": 1, "task": "chaos.ap\xff\xfeply"}',
    "schema": b'{"v": 1, "task": "chaos.apply", "args": "not a list"}',
    "unknown-task": Envelope(task="chaos.no_such_task").encode(),
    "pickle": pickle.dumps({"task": "chaos.apply", "args": [1]}),
    "nan": b'{"v": 1, "task": "chaos.apply", "args": [NaN]}',
    "duplicate-keys": b'{"v": 1, "task": "chaos.apply", "task": "chaos.self_kill"}',
    "too-large": json.dumps({"v": 1, "task": "chaos.apply", "args": ["x" * 70_000]}).encode(),
    "nul-task": b'{"v": 1, "task": "chaos.apply\\u0000"}',
}
_FAILING = ("always-fail", "self-kill")


@dataclass
class Workload:
    run: str
    orders: list[tuple[str, str, int]] = field(default_factory=list)  # (order, key, seq)
    poison: list[tuple[str, str]] = field(default_factory=list)  # (kind, key)
    # submission order: ("order", index) or ("poison", index)
    sequence: list[tuple[str, int]] = field(default_factory=list)

    @property
    def dlq_expected(self) -> int:
        return len(self.poison)


def make_workload(*, run: str, n_tasks: int, poison_ratio: float, seed: int) -> Workload:
    rng = random.Random(seed)
    n_keys = max(1, n_tasks // 10)
    w = Workload(run=run)
    kinds = [*POISON_KINDS, *_FAILING]
    next_seq: dict[str, int] = {}
    for i in range(n_tasks):
        key = f"u{rng.randrange(n_keys)}"
        if rng.random() < poison_ratio:
            # Self-killing tasks are rarer: each costs max_attempts worker processes.
            kind = "self-kill" if rng.random() < 0.02 else kinds[i % (len(kinds) - 1)]
            w.sequence.append(("poison", len(w.poison)))
            w.poison.append((kind, key))
            continue
        seq = next_seq.get(key, 0)
        next_seq[key] = seq + 1
        w.sequence.append(("order", len(w.orders)))
        w.orders.append((f"o{i}", key, seq))
    return w


class Tally:
    """How far the submitter has got: records queued so far (read by another thread)."""

    def __init__(self) -> None:
        self.queued = 0


def submit(
    settings: Settings,
    workload: Workload,
    *,
    work_ms: float,
    ledger: Ledger,
    pace_s: float = 0.0,
    batch: int = 500,
    stop: threading.Event | None = None,
    tally: Tally | None = None,
) -> None:
    """Write the workload to the task topic (``pace_s`` between records spreads it out),
    flushing every ``batch`` records as a caller that needs to know would, and write
    each order's answer to ``ledger``'s submit history: ``ok`` once a flush acknowledged
    it, ``fail`` when the producer reported it not delivered. ``stop`` (the run was
    cancelled) ends it early: what has no answer yet stays ``sent``."""
    stop = stop or threading.Event()
    tally = tally or Tally()
    raw = KafkaProducer({**client_config(settings.bootstrap_servers), "linger.ms": 5})
    run = workload.run
    queued: dict[str, str] = {}  # task id -> order, since the last flush
    others: set[str] = set()  # task ids of poison submitted through the producer
    # "sent" first: an effect of a submit that never got its answer (the submitter died)
    # is then an open question in the history, not an unexpected effect.
    ledger.record_submits((order for order, _, _ in workload.orders), SENT)
    producer = Producer(settings=settings)
    for n, (what, index) in enumerate(workload.sequence):
        if stop.is_set():
            return
        if what == "order":
            order, key, seq = workload.orders[index]
            task_id = producer.submit("chaos.apply", args=[run, order, key, seq, work_ms], key=key)
            queued[task_id] = order
        else:
            kind, key = workload.poison[index]
            if kind == "always-fail":
                others.add(producer.submit("chaos.always_fail", args=[run, f"p{index}"], key=key))
            elif kind == "self-kill":
                others.add(producer.submit("chaos.self_kill", args=[run, f"p{index}"], key=key))
            else:
                raw.produce(settings.topic, POISON_KINDS[kind], key=key.encode())
                raw.poll(0)
        tally.queued = n + 1
        if len(queued) >= batch:
            _answer(producer, queued, others, ledger, stop)
        if pace_s and n % 10 == 9:
            time.sleep(pace_s * 10)
    _answer(producer, queued, others, ledger, stop)
    if raw.flush(30):
        raise DeliveryError("poison records not delivered within 30 s")


def _answer(
    producer: Producer,
    queued: dict[str, str],
    others: set[str],
    ledger: Ledger,
    stop: threading.Event,
) -> None:
    """Flush until every queued record has its answer; write the answers; clear."""
    failed: set[str] = set()
    while not stop.is_set():
        try:
            producer.flush(5)
            break
        except DeliveryError as exc:
            # Without failures it is "still queued": the producer is retrying (a leader
            # is moving); wait on, as acks=all delivery has no other answer to give.
            ids = {task_id for task_id, _ in exc.failures}
            if ids - queued.keys() - others:
                failed.update(queued.values())  # a failure it cannot place: trust none
            failed.update(queued[t] for t in ids & queued.keys())
    else:
        return  # cancelled: the unanswered stay "sent"
    ledger.record_submits(failed, FAIL)
    ledger.record_submits(set(queued.values()) - failed, OK)
    queued.clear()
