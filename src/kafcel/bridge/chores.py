"""What the bridge keeps in Redis besides dispatching: queued marks, compacted done
markers, and the sentinel that tells it Redis lost its data."""

from __future__ import annotations

import logging

from ..errors import BrokerError
from ..guard.once import OnceGuard
from .markers import CommittedMarkers

__all__ = ["RedisChores"]

log = logging.getLogger("kafcel.bridge")


class RedisChores:
    def __init__(self, *, guard: OnceGuard, markers: CommittedMarkers, queued_ttl_s: float) -> None:
        self._guard = guard
        self._markers = markers
        self._queued_ttl_s = queued_ttl_s
        self._queued: list[str] = []

    def queued(self, task_id: str) -> None:
        """Celery has ``task_id``'s message: mark it queued at the next :meth:`flush`."""
        self._queued.append(task_id)

    def flush(self) -> None:
        """One call each for this turn's queued marks and committed markers."""
        if self._queued:
            ids, self._queued = self._queued, []
            try:
                self._guard.mark_queued(ids, self._queued_ttl_s)
            except BrokerError as exc:
                # Without the marks a queued task looks lost after redispatch_after_s: a
                # redundant copy at worst, which the once-guard absorbs.
                log.warning("could not mark %d task(s) queued: %s", len(ids), exc)
        ids = self._markers.take()
        if ids:
            try:
                self._guard.compact(ids)
            except BrokerError as exc:
                # They stay whole until their TTL: more memory in Redis, nothing wrong.
                log.warning("could not compact %d done marker(s): %s", len(ids), exc)

    def data_lost(self) -> bool:
        """True once after a FLUSHALL or a Redis restart; False while Redis is away."""
        try:
            return self._guard.data_lost()
        except BrokerError as exc:
            log.warning("cannot check Redis: %s", exc)
            return False
