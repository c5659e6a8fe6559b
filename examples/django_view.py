"""Submit Celery tasks through Kafka from a Django view.

Wire it in your project's ``urls.py``::

    from django.urls import path

    from examples import django_view

    urlpatterns = [
        path("orders/", django_view.create_order, name="create-order"),
    ]

then, with the bridge and a worker running (see ``examples/README.md``)::

    curl -i -X POST localhost:8000/orders/ \\
         -H 'content-type: application/json' -d '{"order_id": 42, "day": "2026-11-23"}'

The view needs a session or token for ``request.user``; anonymous callers must send
``user_id`` in the body. (CSRF applies as to any POST view: exempt it, or send the token.)

Importing this module has no side effect and does not need configured Django settings:
the process-wide :class:`kafcel.Producer` is created on the first request, reading the
``KAFCEL_*`` environment then, and flushed when the process exits.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import re
import threading
from datetime import date
from typing import Any

from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_POST

import kafcel

__all__ = ["create_order", "get_producer"]

log = logging.getLogger(__name__)

_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
_MAX_ID = 2**63 - 1

# (pid, producer): a producer inherited across fork() (gunicorn --preload, multiprocessing)
# does not work in the child, so each process makes its own.
_producer: tuple[int, kafcel.Producer] | None = None
_producer_lock = threading.Lock()


def get_producer() -> kafcel.Producer:
    """The producer of this process, created once even when requests race for it."""
    global _producer
    current = _producer
    if current is not None and current[0] == os.getpid():
        return current[1]
    with _producer_lock:
        # Checked again under the lock: another thread may have created it meanwhile.
        if _producer is None or _producer[0] != os.getpid():
            producer = kafcel.Producer()
            atexit.register(_flush_at_exit, producer)
            _producer = (os.getpid(), producer)
        return _producer[1]


def _flush_at_exit(producer: kafcel.Producer) -> None:
    try:
        producer.flush(timeout_s=10.0)
    except kafcel.KafcelError:
        log.exception("kafcel: tasks submitted by this process may not have reached Kafka")


class BadRequest(ValueError):
    """The request body is not what the view expects; the message is shown to the caller."""


def _positive_int(body: dict[str, Any], name: str) -> int:
    value = body.get(name)
    # bool is an int in Python; true/false is not an id.
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= _MAX_ID:
        raise BadRequest(f"{name!r} must be a positive integer")
    return value


def _parse_order(request: HttpRequest) -> tuple[int, str, str]:
    """(order_id, day, ordering key) from the JSON body and the user."""
    try:
        body = json.loads(request.body)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise BadRequest(f"body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise BadRequest('body must be a JSON object: {"order_id": 42, "day": "2026-11-23"}')
    order_id = _positive_int(body, "order_id")
    day = body.get("day")
    if not isinstance(day, str) or not _DAY.fullmatch(day):
        raise BadRequest("'day' must be a date as YYYY-MM-DD")
    try:
        date.fromisoformat(day)
    except ValueError as exc:
        raise BadRequest(f"'day' is not a valid date: {day}") from exc
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated:
        key = f"user-{user.pk}"
    else:
        # Only the ordering key comes from the body here; it grants no permission.
        if "user_id" not in body:
            raise BadRequest("log in, or send 'user_id' (a positive integer) in the body")
        key = f"user-{_positive_int(body, 'user_id')}"
    return order_id, day, key


@require_POST
def create_order(request: HttpRequest) -> JsonResponse:
    """Queue ``shop.process_order``; 202 with the task id, 400 on bad input, 503 on Kafka."""
    try:
        order_id, day, key = _parse_order(request)
    except BadRequest as exc:
        return JsonResponse({"error": str(exc)}, status=400)
    try:
        # submit() only queues the record (delivered within linger.ms). If the 202 must mean
        # "durably in Kafka", call get_producer().flush(timeout_s) before answering.
        task_id = get_producer().submit("shop.process_order", args=[order_id, day], key=key)
    except kafcel.KafcelError as exc:
        log.warning("kafcel: could not submit order %s: %s", order_id, exc)
        return JsonResponse(
            {"error": "task queue unavailable", "detail": str(exc)},
            status=503,
            headers={"Retry-After": "5"},
        )
    return JsonResponse({"task_id": task_id}, status=202)
