"""Comparing the speed of a few callables on this machine: each one's best time over alternating rounds."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence


def best_seconds(fns: Sequence[Callable[[], object]], rounds: int, round_seconds: float = 0.0) -> list[float]:
    """Best seconds per call of each of ``fns``, over ``rounds`` rounds that call them in turn.

    Each is called once untimed first. A round calls each ``fns[0]``-sized batch of times: enough calls for
    ``fns[0]`` to take ``round_seconds`` (one call when 0), so that calls of a few microseconds are timed in
    bulk. Alternating spreads the machine's drifts over all of them alike.

    >>> first, second = best_seconds([lambda: sum(range(10)), lambda: sum(range(100_000))], rounds=3)
    >>> first < second
    True
    """
    for fn in fns:
        fn()
    calls = 1
    if round_seconds > 0:
        start = time.perf_counter()
        fns[0]()
        calls = max(1, int(round_seconds / max(time.perf_counter() - start, 1e-6)))
    best = [float("inf")] * len(fns)
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            best[i] = min(best[i], (time.perf_counter() - start) / calls)
    return best
