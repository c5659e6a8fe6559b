"""The Celery side of kafcel: ``install(app)``, the task wrapper, each worker process's
clients and writes. ``kafcel.celery`` is its documented entry point."""

from .install import app_from_env, install, load_app
from .origin import HEADER, origin_of
from .process import WorkerProcess

__all__ = ["HEADER", "WorkerProcess", "app_from_env", "install", "load_app", "origin_of"]
