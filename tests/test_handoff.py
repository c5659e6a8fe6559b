"""The hand-off line between the consuming thread and the hub, its interleavings ordered
by the test: what Celery drops with its broker connection is handed over again, once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from kombu.message import Message

from kafcel.worker.handoff import HandOff

pytestmark = pytest.mark.timeout(30)


class Hub:
    """Runs call_soon callbacks when the test says so."""

    def __init__(self) -> None:
        self.ready: list[Callable[[], None]] = []

    def call_soon(self, callback: Callable[[], None], *args: Any) -> None:
        self.ready.append(callback)

    def run(self) -> None:
        ready, self.ready = self.ready, []
        for callback in ready:
            callback()


def message(handoff: HandOff, task_id: str) -> Message:
    return handoff.message(body=b"[]", headers={"id": task_id}, properties={}, queue="q")


def test_what_celery_dropped_is_handed_over_again_first_and_only_once() -> None:
    handoff, hub, seen = HandOff(), Hub(), []
    handoff.attach(hub, seen.append)
    first, running, dropped = (message(handoff, t) for t in ("done", "running", "dropped"))
    handoff.put([first, running, dropped])
    hub.run()
    assert [m.headers["id"] for m in seen] == ["done", "running", "dropped"]
    first.ack()
    # The connection goes: Celery keeps the running request, drops the waiting one; a
    # record the consuming thread handed over meanwhile still waits in line.
    waiting = message(handoff, "waiting")
    handoff.put([waiting])
    handoff.detach()
    assert handoff.requeue_dropped({"running"}) == 1
    assert handoff.requeue_dropped({"running"}) == 0  # the copy is in line, not dropped
    handoff.attach(hub, seen.append)
    hub.run()
    again = seen[3:]
    assert [m.headers["id"] for m in again] == ["dropped", "waiting"]
    assert again[0].delivery_info["redelivered"] and again[0] is not dropped
    assert not again[1].delivery_info["redelivered"]


def test_a_rejected_message_with_requeue_comes_back_marked_redelivered() -> None:
    handoff, hub, seen = HandOff(), Hub(), []
    handoff.attach(hub, seen.append)
    lost = message(handoff, "lost")
    handoff.put([lost])
    hub.run()
    lost.reject(requeue=True)  # its worker process died (reject_on_worker_lost)
    hub.run()
    assert [m.headers["id"] for m in seen] == ["lost", "lost"]
    assert seen[1].delivery_info["redelivered"]
    assert handoff.unacknowledged() == 1
