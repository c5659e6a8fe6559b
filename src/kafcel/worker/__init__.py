"""The Celery side of kafcel (``kafcel.celery.install`` is its entry point)."""

from .process import WorkerProcess

__all__ = ["WorkerProcess"]
