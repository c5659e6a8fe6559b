"""What kafcel tells about itself: logs (:mod:`.logs`), Prometheus metrics
(:mod:`.metrics`), the bridges' commit reports and their evaluation (:mod:`.health`).

Nothing is imported here: with metrics off, prometheus_client is never loaded.
"""
