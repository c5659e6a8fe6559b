"""Submit Celery tasks through Kafka from a FastAPI app.

Run from the repository root, with the local stack up (``make dev-up``) and the bridge and
a worker running (see ``examples/README.md``)::

    .venv/bin/uvicorn examples.fastapi_app:app

    curl -i -X POST localhost:8000/users/7/orders \\
         -H 'content-type: application/json' -d '{"order_id": 42, "day": "2026-11-23"}'

One :class:`kafcel.Producer` serves the whole process: it is created at startup, shared by
every request (it is thread-safe) and flushed at shutdown, so tasks queued just before a
graceful stop still reach Kafka.

``submit()`` only queues the record; it reaches Kafka within ``linger.ms`` (5 ms). If the
process dies in that window the task is lost although the client got its 202. When the
answer must mean "durably in Kafka", call ``producer.flush(timeout_s)`` before returning,
at the price of one broker round trip per request.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

import kafcel

__all__ = ["OrderIn", "TaskAccepted", "app"]

# The one producer of this process; set by ``lifespan``.
producer: kafcel.Producer | None = None


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    global producer
    # Settings come from KAFCEL_* (KAFCEL_BOOTSTRAP_SERVERS, KAFCEL_TOPIC...), read now.
    producer = kafcel.Producer()
    try:
        yield
    finally:
        current, producer = producer, None
        # Waits for queued records; raises DeliveryError (logged by the server) if some
        # could not be delivered, so a lost task never goes unnoticed.
        current.flush(timeout_s=10.0)


app = FastAPI(title="kafcel example: shop", lifespan=lifespan)


class OrderIn(BaseModel):
    order_id: int = Field(gt=0, lt=2**63)
    day: str = Field(pattern=r"^\d{4}-\d{2}-\d{2}$", examples=["2026-11-23"])


class TaskAccepted(BaseModel):
    task_id: str


@app.exception_handler(kafcel.KafcelError)
async def kafcel_unavailable(_: Request, exc: kafcel.KafcelError) -> JSONResponse:
    return JSONResponse(
        status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        content={"error": "task queue unavailable", "detail": str(exc)},
        headers={"Retry-After": "5"},
    )


# A plain ``def``: FastAPI runs it in its thread pool, so the rare wait of ``submit()``
# for room in a full local queue never blocks the event loop.
@app.post(
    "/users/{user_id}/orders",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=TaskAccepted,
)
def create_order(user_id: int, order: OrderIn) -> TaskAccepted:
    if producer is None:
        raise kafcel.ConfigError("the producer is not started (lifespan did not run)")
    task_id = producer.submit(
        "shop.process_order",
        args=[order.order_id, order.day],
        # Same key, same partition: with `kafcel bridge --ordering key` one user's orders
        # run one after the other while other users' orders run in parallel.
        key=f"user-{user_id}",
    )
    return TaskAccepted(task_id=task_id)
