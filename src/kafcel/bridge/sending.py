"""Sending the loop's admitted records to Celery, and holding them while it cannot take
them: the part of :class:`~kafcel.bridge.Bridge` that talks to its publisher (Celery's
broker on the bridge path, the worker's own consumer on path B)."""

from __future__ import annotations

import logging

from celery import Celery

from ..errors import DispatchHeld, DispatchRefused
from .clients import BridgeClients
from .dispatch import Dispatch
from .held import HeldDispatches
from .presence import BridgeStats
from .publish import Publisher

__all__ = ["Sending"]

log = logging.getLogger("kafcel.bridge")


class Sending:
    """Mixed into the bridge loop: its state is the loop's own (one thread)."""

    app: Celery
    stats: BridgeStats
    _clients: BridgeClients
    _held: HeldDispatches
    _publisher: Publisher | None
    _outbox: list[Dispatch]

    def wake_held(self) -> None:
        """Send what is held at the next turn (safe from another thread)."""
        self._held.wake()

    def _publish(self, items: list[Dispatch]) -> list[DispatchRefused | DispatchHeld | None]:
        publisher = self._open_publisher()
        answers = publisher.publish(items)
        self.stats.broker_round_trips = publisher.round_trips
        if not any(isinstance(answer, DispatchHeld) for answer in answers):
            self._held.cleared()
        return answers

    def _open_publisher(self) -> Publisher:
        if self._publisher is None:
            self._publisher = self._clients.publisher(self.app)
        return self._publisher

    def _retry_held(self) -> None:
        if not self._held.due():
            return
        if self._held.broker_down:
            if not self._open_publisher().reachable(timeout_s=1.0):
                self._held.wait_longer()
                return
            self._held.back()
        # In their order, before anything admitted since: a key's records stay in line.
        self._outbox[:0] = self._held.take()

    def _resend(self, item: Dispatch) -> DispatchRefused | DispatchHeld | None:
        """Send a copy of a message Celery took before; why not, if it was not sent."""
        (refused,) = self._publish([item])
        if refused is not None:
            # The original stays pending: its outcome may still come.
            log.error("%s (redispatch of %s)", refused, item.task_id)
        return refused
