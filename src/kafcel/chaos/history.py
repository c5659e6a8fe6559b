"""The history check: what was submitted against what happened, afterwards, as a
Jepsen queue checker reads a history.

The ledger keeps two histories of a run: every submit with its answer (``ok``:
acknowledged by the producer's ``flush()``; ``fail``: reported to the caller as not
delivered; ``sent``: queued but never answered, e.g. the submitter died) and every
effect in the order the ledger applied it. The check needs nothing else, so it stands
apart from the counters the ledger keeps as effects arrive; a scenario passes only when
both agree.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["Effect", "History", "check"]

OK, FAIL, SENT = "ok", "fail", "sent"


@dataclass(frozen=True)
class Effect:
    order: str
    key: str
    seq: int


@dataclass(frozen=True)
class History:
    acknowledged: int  # submits flush() acknowledged
    failed: int  # submits reported as not delivered (may or may not run)
    unanswered: int  # submits that never got an answer (may or may not run)
    lost: int  # acknowledged, and no effect
    duplicated: int  # effects beyond one per order
    unexpected: int  # effects of orders never submitted
    out_of_order: int  # keys whose effects ran a lower sequence after a higher one


def check(submits: Mapping[str, str], effects: Sequence[Effect]) -> History:
    """``submits``: order -> ``ok``/``fail``/``sent``; ``effects`` in the order applied."""
    answers = Counter(submits.values())
    per_order = Counter(e.order for e in effects)
    acknowledged = {order for order, answer in submits.items() if answer == OK}
    highest: dict[str, int] = {}
    disordered: set[str] = set()
    seen: set[str] = set()
    for effect in effects:
        if effect.order not in submits or effect.order in seen:
            continue  # counted as unexpected or duplicated, not as an ordering fault
        seen.add(effect.order)
        if effect.seq < highest.get(effect.key, -1):
            disordered.add(effect.key)
        highest[effect.key] = max(effect.seq, highest.get(effect.key, -1))
    return History(
        acknowledged=len(acknowledged),
        failed=answers[FAIL],
        unanswered=answers[SENT],
        lost=len(acknowledged - set(per_order)),
        duplicated=sum(n - 1 for n in per_order.values() if n > 1),
        unexpected=sum(n for order, n in per_order.items() if order not in submits),
        out_of_order=len(disordered),
    )
