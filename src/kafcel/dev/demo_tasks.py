"""The Celery app of ``kafcel demo``: ``process_order`` with a ledger of every execution.

The ledger is independent of kafcel: each execution records its order id and attempt in
Redis, so the demo can count orders whose effect never happened or happened twice.
Configuration is read when Celery first needs it, never at import time.
"""

from __future__ import annotations

import os
from typing import Any

import redis

from ..settings import Settings
from ..worker import app_from_env

__all__ = ["TransientOrderError", "app", "process_order"]


app = app_from_env("kafcel_demo", queue_env="KAFCEL_DEMO_QUEUE", default_queue="kafcel-demo")


class TransientOrderError(Exception):
    """A failure that goes away when retried (a timeout of the payment service, say)."""


_ledger_client: tuple[int, redis.Redis[bytes]] | None = None


def _ledger() -> redis.Redis[bytes]:
    global _ledger_client
    if _ledger_client is None or _ledger_client[0] != os.getpid():
        _ledger_client = (os.getpid(), redis.Redis.from_url(Settings.from_env().redis_url))
    return _ledger_client[1]


def fails_once(order_id: int) -> bool:
    """About 1% of orders fail on their first attempt."""
    return order_id % 100 == 7


@app.task(  # type: ignore[untyped-decorator]
    bind=True,
    autoretry_for=(TransientOrderError,),
    retry_backoff=1,
    retry_backoff_max=8,
    retry_jitter=False,
    max_retries=5,
)
def process_order(self: Any, order_id: int, day: str) -> dict[str, Any]:
    prefix = os.environ.get("KAFCEL_DEMO_LEDGER", "kafcel:demo")
    ledger = _ledger()
    attempt = int(self.request.retries or 0)
    ledger.hincrby(f"{prefix}:attempts", str(order_id), 1)
    if fails_once(order_id) and attempt == 0:
        raise TransientOrderError(f"payment service timed out for order {order_id}")
    ledger.hincrby(f"{prefix}:effects", str(order_id), 1)
    return {"order_id": order_id, "day": day, "attempt": attempt}
