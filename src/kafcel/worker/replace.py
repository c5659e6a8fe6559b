"""``self.replace(sig)`` on a task kafcel dispatched: the record settles on the
replacement's final outcome.

Celery 5 freezes the replacement with the replaced task's id (so an ``AsyncResult`` of
the id follows it) but sends it with none of the original message's headers. The
replacement that carries the id (the signature itself, a chain's last task, a chord's
body) is given the ``kafcel`` header, and the id is freed for it before it is sent: it
then runs under the once-guard and publishes the outcome the record waits for. A
replacement with no signature under the id (none found) ends the record as before: a
success with no result.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import Task

from ..protocol.outcome import Origin

__all__ = ["follow_replacement"]


def follow_replacement(
    task: Task,
    header: str,
    origin_of: Callable[[Any], Origin | None],
    hand_over: Callable[[str], None],
    mark: str,
) -> None:
    """Wrap ``task.on_replace``: the replacement carrying the id gets ``header``, the
    id is handed over to it, and the request gets attribute ``mark`` (its Ignore is no
    outcome)."""
    on_replace: Callable[[Any], Any] = task.on_replace

    def follow(sig: Any) -> Any:
        request = task.request
        origin = origin_of(request)
        carrier = None if origin is None else _carrier(sig, request.id)
        if carrier is not None and origin is not None and not request.is_eager:
            headers = dict(carrier.options.get("headers") or {})
            headers[header] = origin.to_header()
            carrier.set(headers=headers)
            # Handed over before the replacement is sent: it may start at once, elsewhere;
            # until it does, the id reads as queued, so the bridge does not send the
            # original again.
            hand_over(request.id)
            setattr(request, mark, True)
        return on_replace(sig)

    task.on_replace = follow


def _carrier(sig: Any, task_id: str) -> Any:
    """The single-task signature inside ``sig`` that Celery froze with ``task_id``."""
    for part in (getattr(sig, "body", None), *reversed(getattr(sig, "tasks", None) or ())):
        if part is not None and (found := _carrier(part, task_id)) is not None:
            return found
    if isinstance(getattr(sig, "task", None), str) and sig.options.get("task_id") == task_id:
        return sig
    return None
