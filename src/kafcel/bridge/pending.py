"""Dispatched records waiting for their task's outcome, by task id.

Two records may share an explicit task id, and a record re-dispatched under a newer
assignment waits beside its earlier copy, so each id maps to a list.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from ..protocol.outcome import Outcome
from .dispatch import Dispatch
from .tracker import TP

__all__ = ["Pending"]


class Pending:
    """The records the bridge dispatched and has no final outcome for yet."""

    def __init__(self) -> None:
        self._by_id: dict[str, list[Dispatch]] = {}

    def __bool__(self) -> bool:
        return bool(self._by_id)

    def add(self, item: Dispatch) -> None:
        self._by_id.setdefault(item.task_id, []).append(item)

    def get(self, task_id: str) -> list[Dispatch]:
        return self._by_id.get(task_id, [])

    def lists(self) -> Iterator[list[Dispatch]]:
        return iter(self._by_id.values())

    def queues(self) -> set[str | None]:
        """The Celery queues the waiting records were sent to (None: the default)."""
        return {item.queue for items in self._by_id.values() for item in items}

    def answer(self, outcome: Outcome) -> tuple[list[Dispatch], bool] | None:
        """The records ``outcome`` settles, and whether its task id waits for nothing more;
        None if no record waits for it.

        An outcome answering an earlier assignment's dispatch settles nothing: the copy
        sent under the current fence re-announces it (the once-guard knows it is done).
        """
        found = self._by_id.pop(outcome.task_id, None)
        if found is None:
            return None
        stale = [item for item in found if not outcome.answers(item.fence)]
        if stale:
            self._by_id[outcome.task_id] = stale
        return [item for item in found if outcome.answers(item.fence)], not stale

    def forget(self, gone: Iterable[TP]) -> list[str]:
        """Drop the records of partitions ``gone``; return the task ids left waiting for
        nothing."""
        partitions = set(gone)
        finished: list[str] = []
        for task_id, items in list(self._by_id.items()):
            kept = [item for item in items if item.tp not in partitions]
            if kept:
                self._by_id[task_id] = kept
            else:
                del self._by_id[task_id]
                finished.append(task_id)
        return finished
