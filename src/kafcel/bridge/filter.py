"""The task allow-list: registered tasks plus ``allow`` patterns, minus ``deny`` patterns."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from fnmatch import fnmatchcase

from ..errors import TaskNotAllowed

__all__ = ["TaskFilter"]


class TaskFilter:
    """Decides which task names may become Celery tasks; everything else goes to the DLQ."""

    def __init__(
        self,
        *,
        registered: Collection[str],
        allow: Iterable[str] = (),
        deny: Iterable[str] = (),
    ) -> None:
        # Celery's own built-ins (chords, backend cleanup) are not for Kafka producers.
        self._registered = frozenset(n for n in registered if not n.startswith("celery."))
        self._allow = tuple(allow)
        self._deny = tuple(deny)
        self._cache: dict[str, str | None] = {}

    def check(self, task: str) -> None:
        """Raise :class:`TaskNotAllowed` with the reason if ``task`` may not run."""
        reason = self._cache.get(task, "")
        if reason == "":
            reason = self._reason(task)
            if len(self._cache) < 10_000:
                self._cache[task] = reason
        if reason is not None:
            raise TaskNotAllowed(reason, field="task")

    def _reason(self, task: str) -> str | None:
        for pattern in self._deny:
            if fnmatchcase(task, pattern):
                return f"task {task!r} is denied by pattern {pattern!r}"
        if task in self._registered:
            return None
        if any(fnmatchcase(task, pattern) for pattern in self._allow):
            return None
        return f"task {task!r} is not registered in the Celery app nor on the allow-list"
