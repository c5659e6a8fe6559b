"""Records Celery could not take through no fault of their own, waiting to be sent again.

A bad ``task_routes`` deploy, a broker ACL, the broker down: none of these is the
record's fault, so none may dead-letter it (one bad deploy would drain a whole topic into
the DLQ). The bridge keeps such records, in order, and tries again with backoff; they
stay unsettled, so their partitions' commits wait and ``kafcel status`` shows the
partitions STALL with the reason. Meanwhile the loop goes on: it polls Kafka (group
membership), reads outcomes and sends what Celery does take.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from ..errors import DispatchHeld
from .dispatch import Dispatch
from .tracker import TP

__all__ = ["HeldDispatches"]

log = logging.getLogger("kafcel.bridge")

_FIRST_RETRY_S = 0.5
_MAX_RETRY_S = 30.0


class HeldDispatches:
    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._items: list[Dispatch] = []
        self._retry_at = 0.0
        self._backoff_s = _FIRST_RETRY_S
        self._why: DispatchHeld | None = None

    def __len__(self) -> int:
        return len(self._items)

    @property
    def reason(self) -> str | None:
        return None if self._why is None else str(self._why)

    @property
    def broker_down(self) -> bool:
        return self._why is not None and self._why.broker_down

    def hold_all(self, items: list[Dispatch]) -> None:
        """The broker is known to be down: these wait too, without a publish (each one
        would wait seconds on kombu's connection retries) until the probe finds it back."""
        assert self._why is not None
        for item in items:
            self.hold(item, self._why)

    def back(self) -> None:
        """The probe reached the broker: publish again (a failure holds anew)."""
        self._why = None

    def hold(self, item: Dispatch, why: DispatchHeld) -> None:
        if str(why) != self.reason:
            log.error("%s; holding %s and retrying (not the record's fault)", why, item.task_id)
        self._why = why
        if not self._items:
            self._retry_at = self._clock() + self._backoff_s
        self._items.append(item)

    def due(self) -> bool:
        return bool(self._items) and self._clock() >= self._retry_at

    def take(self) -> list[Dispatch]:
        """Everything held, to send again now; the next hold waits twice as long."""
        items, self._items = self._items, []
        self._backoff_s = min(self._backoff_s * 2, _MAX_RETRY_S)
        return items

    def wake(self) -> None:
        """Try again at the next turn: the broker is known to be back (path B: Celery's
        consumer restarted). Safe from another thread: one float assignment."""
        self._retry_at = 0.0

    def wait_longer(self) -> None:
        """The broker still does not answer: look again after the next backoff."""
        self._retry_at = self._clock() + self._backoff_s
        self._backoff_s = min(self._backoff_s * 2, _MAX_RETRY_S)

    def cleared(self) -> None:
        """A send went through with nothing held back: start over with short retries."""
        if not self._items:
            if self._why is not None:
                log.info("Celery takes the held tasks again")
            self._why = None
            self._backoff_s = _FIRST_RETRY_S

    def partitions(self) -> dict[TP, str]:
        """Partitions with a held record, and why."""
        return {item.tp: self.reason or "" for item in self._items}

    def forget(self, tps: Iterable[TP]) -> None:
        gone = set(tps)
        self._items = [item for item in self._items if item.tp not in gone]
