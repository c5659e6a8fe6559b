"""Celery side of kafcel: ``kafcel.celery.install(app)``, the documented entry point.

The code lives in :mod:`kafcel.worker`; this module keeps the public path users import.
"""

from .worker import HEADER, app_from_env, install, load_app, origin_of

__all__ = ["HEADER", "app_from_env", "install", "load_app", "origin_of"]
