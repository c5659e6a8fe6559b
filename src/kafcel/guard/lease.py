"""The lease keeper: renews the once-guard's leases of the tasks a process runs, and ends
the process before any of them can lapse unrenewed, so no two attempts of one task id
ever run at the same time (docs/reliability.md, "No two attempts of one id at the same
time").
"""

from __future__ import annotations

import contextlib
import faulthandler
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any, NoReturn, Protocol, TextIO

from ..errors import BrokerError, ConfigError
from .once import OnceGuard

__all__ = ["LeaseKeeper", "ProcessSwitch", "Switch", "check_pool", "pool_check"]

log = logging.getLogger("kafcel.once")

# A held lease is given up this far into it when no renewal confirmed it since: the rest
# covers the process's end and the drift between our clock and Redis's.
_GIVE_UP_AT = 0.9


class Switch(Protocol):
    """Ends this process unless pushed back in time: what makes a give-up real."""

    @property
    def armed(self) -> bool: ...

    def arm(self, timeout_s: float) -> None: ...

    def disarm(self) -> None: ...

    def trip(self, reason: str) -> NoReturn: ...


class ProcessSwitch:
    """A dead man's switch on this process: :mod:`faulthandler`'s watchdog.

    Its timer is a C thread that needs neither the GIL nor a signal handler, so it fires
    while a task holds the GIL in a C call, while the lease keeper hangs in a Redis call,
    and whatever the task does with SIGALRM. When it fires it writes every thread's
    traceback to stderr and ends the process with ``_exit(1)``: only the end of the
    process stops an attempt for sure (a thread cannot be killed), and it leaves nothing
    half-finished for the next attempt to trip on besides the task's own effects.
    """

    def __init__(self) -> None:
        self._armed = False
        self._file = _stderr()

    @property
    def armed(self) -> bool:
        return self._armed

    def arm(self, timeout_s: float) -> None:
        if timeout_s <= 0:
            self.trip("its lease was not confirmed in time")
        faulthandler.dump_traceback_later(timeout_s, exit=True, file=self._file)
        self._armed = True

    def disarm(self) -> None:
        if self._armed:
            faulthandler.cancel_dump_traceback_later()
            self._armed = False

    def trip(self, reason: str) -> NoReturn:
        log.critical("kafcel: process %d gives its running tasks up: %s", os.getpid(), reason)
        faulthandler.dump_traceback(file=self._file)
        os._exit(1)


def _stderr() -> TextIO:
    """A file with a descriptor for faulthandler (Celery replaces ``sys.stderr`` with a
    logging proxy in its workers; the original is still there)."""
    for f in (sys.__stderr__, sys.stderr):
        try:
            if f is not None:
                f.fileno()
                return f
        except (OSError, ValueError, AttributeError):
            continue
    return open(os.devnull, "w")  # held for the life of the process


class LeaseKeeper:
    """Renews the leases of the tasks running in this process, and gives them up before
    they lapse.

    Each held lease is dated by when the request that last confirmed it was *sent* (the
    claim, then each renewal): Redis set it later, so it lasts at least until then plus
    ``lease_s``. The switch stands at the earliest such date plus 90 % of the lease and is
    pushed back by each confirmed renewal; when none gets through (Redis unreachable, the
    keeper thread starved by a task holding the GIL) it fires and ends the process, before
    any lease of it lapses and another attempt of the id may start. A renewal that finds
    the id held by someone else ends the process at once.

    Renewals and the end of an attempt take turns (``letting_go``), so a lease is never
    renewed after its task ended (which would make a released id look running after a
    FLUSHALL).
    """

    def __init__(
        self, guard: OnceGuard, *, switch: Switch | None = None, thread: bool = True
    ) -> None:
        """``thread=False``: no renewal thread; the caller calls :meth:`renew_now`."""
        self._guard = guard
        self._switch: Switch = switch if switch is not None else ProcessSwitch()
        self._give_up_after_s = guard.lease_s * _GIVE_UP_AT
        self._held: dict[str, float] = {}  # task id -> its lease confirmed from
        self._state = threading.Lock()  # _held and the switch; never held across I/O
        self._turn = threading.Lock()  # a renewal, or the end of an attempt
        self._stop = threading.Event()
        if thread:
            threading.Thread(target=self._loop, name="kafcel-lease", daemon=True).start()

    def hold(self, task_id: str, leased_at: float) -> None:
        """Keep ``task_id``'s lease, taken by a request sent at ``leased_at``."""
        with self._state:
            self._held[task_id] = leased_at
            if not self._switch.armed:
                # An armed switch stands earlier already: it dates from older requests.
                self._arm(leased_at)

    @contextlib.contextmanager
    def letting_go(self, task_id: str) -> Iterator[None]:
        """Stop renewing ``task_id`` for the duration (the caller ends its attempt).

        The switch stays armed until the next round finds nothing held: re-arming it costs
        a thread start, which back-to-back tasks need not pay.
        """
        with self._turn:
            with self._state:
                self._held.pop(task_id, None)
            yield

    def stop(self) -> None:
        self._stop.set()

    def renew_now(self) -> None:
        """One round: renew every held lease, then push the switch back."""
        with self._turn:
            with self._state:
                held = list(self._held)
                if not held:
                    self._switch.disarm()
                    return
            sent = self._guard.clock()
            try:
                kept = self._guard.renew(held)
            except BrokerError as exc:
                with self._state:
                    left_s = min(self._held.values()) + self._give_up_after_s
                log.warning(
                    "kafcel: could not renew %d lease(s): %s; this process gives its tasks "
                    "up in %.1fs unless a renewal gets through",
                    len(held),
                    exc,
                    left_s - self._guard.clock(),
                )
                return
            lost = [task_id for task_id, ours in kept.items() if not ours]
            if lost:
                self._switch.trip(f"another attempt holds {', '.join(lost)} now")
            with self._state:
                for task_id in held:
                    if task_id in self._held:
                        self._held[task_id] = sent
                if self._held:
                    self._arm(min(self._held.values()))

    def _arm(self, confirmed_at: float) -> None:
        self._switch.arm(confirmed_at + self._give_up_after_s - self._guard.clock())

    def _loop(self) -> None:
        period_s = self._guard.lease_s / 3
        while not self._stop.wait(period_s):
            self.renew_now()


_GREEN_POOLS = ("gevent", "eventlet")


def check_pool(pool_cls: Any) -> None:
    """Raise ConfigError for a pool that would run kafcel's tasks on greenlets.

    The lease keeper is a thread; gevent and eventlet make it a greenlet, which does not
    run while a task computes without yielding. Its leases would go unrenewed and the
    process switch would end the worker, with every task it runs, each time a task
    computes for most of ``once_lease_s``. ``pool_cls`` is the worker's pool as Celery
    has it at ``worker_init``: a name, ``module:Class``, or the class.
    """
    if isinstance(pool_cls, type):
        modules = [klass.__module__ for klass in pool_cls.__mro__]
    else:
        modules = [str(pool_cls or "").split(":")[0]]
    for module in modules:
        name = module.rsplit(".", 1)[-1]
        if name in _GREEN_POOLS:
            raise ConfigError(
                f"the {name} pool cannot keep the once-guard's leases while a task "
                "computes; run this worker with -P prefork (or -P threads for I/O-bound "
                "tasks)"
            )


def pool_check(app: Any) -> Callable[..., None]:
    """A ``worker_init`` receiver that stops a worker of ``app`` on a green pool."""

    def refuse_green_pool(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", app) is not app:
            return
        try:
            check_pool(getattr(sender, "pool_cls", None))
        except ConfigError as exc:
            # Celery logs and swallows an Exception raised by a signal handler: only
            # SystemExit stops the worker before its pool starts.
            log.critical("kafcel: %s", exc)
            raise SystemExit(f"kafcel: {exc}") from exc

    return refuse_green_pool
