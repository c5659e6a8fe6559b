"""The Celery app of the examples: one task, ``shop.process_order``.

Run the worker and the bridge from the repository root, against ``make dev-up``::

    .venv/bin/celery -A examples.shop.tasks:app worker --loglevel=INFO
    .venv/bin/kafcel bridge -A examples.shop.tasks:app --ordering key

Nothing is read from the environment at import time: the broker and result backend come
from ``KAFCEL_REDIS_URL`` (via :meth:`kafcel.Settings.from_env`) when Celery first needs
them, so importing this module in a web process or a test has no side effect.
"""

from __future__ import annotations

import logging
from datetime import date
from typing import Any

from celery import Celery, Task

import kafcel
import kafcel.celery

__all__ = ["PaymentServiceUnavailable", "app", "process_order"]

log = logging.getLogger("shop")


class _LazyConfig:
    """Celery reads these attributes on first use of ``app.conf``, not at import."""

    @property
    def broker_url(self) -> str:
        return kafcel.Settings.from_env().redis_url

    @property
    def result_backend(self) -> str:
        return kafcel.Settings.from_env().redis_url

    # Its own queue, so the examples never mix with `kafcel demo` on the same Redis.
    task_default_queue = "shop"
    result_expires = 24 * 3600
    broker_connection_retry_on_startup = True


app = Celery("shop")
app.config_from_object(_LazyConfig())
# acks_late for kafcel's messages, the once-guard on every task, outcomes to the results topic.
kafcel.celery.install(app)


class PaymentServiceUnavailable(Exception):
    """A transient failure of the payment service (timeout, 503): worth a retry."""


def charge(order_id: int, day: date, *, idempotency_key: str) -> str:
    """Stand-in for the payment service's client; a real one makes an HTTP call here."""
    log.info(
        "POST https://payments.example/charges order=%s day=%s Idempotency-Key=%s",
        order_id,
        day.isoformat(),
        idempotency_key,
    )
    return f"ch_{idempotency_key.replace('-', '')[:16]}"


@app.task(name="shop.process_order", bind=True, max_retries=3, default_retry_delay=60)
def process_order(self: Task, order_id: int, day: str) -> dict[str, Any]:
    """Charge one order.

    Why ``self.request.id`` is the idempotency key (the inbox pattern): kafcel gives every
    Kafka record one task id for good (the envelope's ``id``, else a UUIDv5 of
    topic/partition/offset), and Celery keeps that id across ``self.retry()``. kafcel's
    once-guard skips an id that already finished, but it cannot help when a worker dies
    *after* the charge and *before* the outcome is recorded: Celery (``acks_late``) then
    runs the task again with the same id. The payment service keeps the keys it has seen
    (its inbox) and answers a repeated key with the first charge instead of charging twice.

    For an effect in your own database, do the same with a table of processed task ids:
    insert ``self.request.id`` (unique) in the same transaction as the effect, and return
    early when the insert hits the unique constraint.
    """
    # A bad argument is permanent: raising fails the task without retries, and kafcel
    # puts the request on the DLQ with the error, ready for a fix and a replay.
    order_day = date.fromisoformat(day)
    idempotency_key: str = self.request.id
    try:
        charge_id = charge(order_id, order_day, idempotency_key=idempotency_key)
    except PaymentServiceUnavailable as exc:
        # Transient: again in 60 s, at most 3 times, with the same task id, so the retry
        # reuses the idempotency key. With --ordering key the user's later orders wait.
        raise self.retry(exc=exc) from exc
    log.info("order %s charged (%s, attempt %s)", order_id, charge_id, self.request.retries + 1)
    # The return value goes to the result backend and, as the outcome, to the results topic.
    return {"order_id": order_id, "day": order_day.isoformat(), "charge_id": charge_id}
