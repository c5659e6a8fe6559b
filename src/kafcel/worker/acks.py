"""Per-message acknowledgement: ``acks_late`` and ``reject_on_worker_lost`` for the
messages kafcel dispatched, the app's own settings for every other message.

A Kafka record's task must not be acknowledged before it ran: a worker dying mid-task
would take the message with it, and only the bridge's redispatch (minutes later) would
bring it back. Setting ``task_acks_late`` app-wide would change every task of the app,
including those sent by a plain ``delay()``, and with ``task_reject_on_worker_lost`` a
task that kills its worker would be requeued forever. So :func:`per_message_acks` gives
each task a ``Request`` class (Celery's ``Task.Request`` hook, read by the worker's
strategy) whose ``task`` is, for a message carrying the ``kafcel`` header, a proxy of the
task that reads ``acks_late`` and ``reject_on_worker_lost`` as true. Celery's own
``Request`` code (worker/request.py) reads both through ``self.task``; the proxy is a
``celery.local.Proxy``, so signals sent with it as sender still match receivers
connected to the task itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import Task
from celery.local import Proxy
from celery.utils.imports import symbol_by_name

__all__ = ["per_message_acks"]

_MARK = "__kafcel_per_message_acks__"


class _LateAcks(Proxy):  # type: ignore[misc]
    """The task as a kafcel message sees it: acknowledged after it ran, requeued when
    its worker process is lost (the once-guard counts those losses: max_attempts)."""

    acks_late = True
    reject_on_worker_lost = True


def per_message_acks(
    task: Task, header: str, *, on_hard_timeout: Callable[[Any, float], None] | None = None
) -> None:
    """Give ``task`` a Request class that acks messages carrying ``header`` late.
    Keeps a Request class the task already has (as the base); safe to call twice.

    ``on_hard_timeout(request, timeout_s)`` runs in the worker's main process after a
    hard time limit killed the process running such a message's task: nothing in that
    process could announce the failure."""
    base: type[Any] = symbol_by_name(task.Request)
    if getattr(base, _MARK, False):
        return

    class KafcelRequest(base):  # type: ignore[misc]
        def __init_subclass__(cls, **kwargs: Any) -> None:
            # The worker's strategy subclasses this class per task (create_request_cls)
            # with an on_success that acks only if the *task* is acks_late, read once
            # when the strategy is built: a kafcel message of an acks-early task is
            # acknowledged here instead, once it has run.
            super().__init_subclass__(**kwargs)
            inner = cls.__dict__.get("on_success")
            if inner is None:
                return

            def on_success(self: Any, failed__retval__runtime: Any, **kw: Any) -> Any:
                result = inner(self, failed__retval__runtime, **kw)
                if not failed__retval__runtime[0] and self.kafcel_message:
                    self.acknowledge()  # a no-op when already acknowledged
                return result

            cls.on_success = on_success

        def on_timeout(self, soft: bool, timeout: float) -> None:
            try:
                super().on_timeout(soft, timeout)
            finally:
                # Even if Celery's own handling failed (its result backend down).
                if not soft and on_hard_timeout is not None and self.kafcel_message:
                    on_hard_timeout(self, timeout)

        @property
        def kafcel_message(self) -> bool:
            return header in self._request_dict

        @property
        def task(self) -> Any:
            real = self._task
            if not self.kafcel_message:
                return real
            view = self.__dict__.get("_kafcel_task")
            if view is None:
                view = self.__dict__["_kafcel_task"] = _LateAcks(lambda: real)
            return view

    setattr(KafcelRequest, _MARK, True)
    KafcelRequest.__qualname__ = KafcelRequest.__name__ = f"Kafcel{base.__name__}"
    task.Request = KafcelRequest
