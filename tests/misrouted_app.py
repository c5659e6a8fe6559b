"""The tests' Celery app after a bad deploy: ``tests.app.record`` is routed to a queue
the app neither declares nor creates (``task_create_missing_queues`` off)."""

from __future__ import annotations

from .app import app

app.conf.task_create_missing_queues = False
app.conf.task_routes = {"tests.app.record": {"queue": "nowhere"}}

__all__ = ["app"]
