"""best_seconds times each callable alike: one untimed call, then the same batch of calls per round."""

from __future__ import annotations

import doctest
import time

import rag.timing
from rag.timing import best_seconds


def test_docstring_examples() -> None:
    assert doctest.testmod(rag.timing).failed == 0


def test_each_callable_is_warmed_up_then_called_once_per_round() -> None:
    calls = [0, 0]

    def count(i: int) -> None:
        calls[i] += 1

    best = best_seconds([lambda: count(0), lambda: count(1)], rounds=4)
    assert calls == [1 + 4, 1 + 4]
    assert len(best) == 2 and all(0 <= b < 1 for b in best)


def test_a_round_batches_enough_calls_of_the_first_to_fill_round_seconds() -> None:
    calls = [0, 0]

    def slow() -> None:
        calls[0] += 1
        time.sleep(0.002)

    def fast() -> None:
        calls[1] += 1

    (slow_s, fast_s) = best_seconds([slow, fast], rounds=2, round_seconds=0.02)
    per_round = (calls[0] - 2) // 2  # minus the warm-up and the sizing call
    assert 1 <= per_round <= 10  # ~0.02 / 0.002, fewer when a sleep overshoots
    assert calls[1] == 1 + 2 * per_round  # the same batch for every callable
    assert slow_s >= 0.002 > fast_s
