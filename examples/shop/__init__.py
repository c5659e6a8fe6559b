"""The Celery side of the kafcel examples: ``examples.shop.tasks:app``."""
