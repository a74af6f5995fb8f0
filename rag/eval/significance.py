"""Per-query scores and a bootstrap confidence interval of the change between two runs on the same queries.

Reranking a few hundred queries moves nDCG@10 by a few points; whether that is more than the queries' spread
needs an interval. The interval is scipy's bootstrap (BCa) of the mean per-query difference, paired by query.

>>> before = {"q1": 0.5, "q2": 0.25, "q3": 1.0, "q4": 0.0}
>>> after = {"q1": 0.75, "q2": 0.5, "q3": 1.0, "q4": 0.25}
>>> change = paired_change(before, after)
>>> round(change.mean, 4), change.low <= change.mean <= change.high
(0.1875, True)
"""

from __future__ import annotations

from dataclasses import dataclass

import ir_measures
import numpy as np
from scipy import stats

from rag.types import Hit


@dataclass(frozen=True)
class Change:
    """Mean of ``after - before`` over the queries, with its confidence interval."""

    mean: float
    low: float
    high: float
    queries: int

    def __str__(self) -> str:
        return f"{100 * self.mean:+.1f} [{100 * self.low:+.1f}, {100 * self.high:+.1f}]"


def per_query(run: dict[str, list[Hit]], qrels: dict[str, dict[str, int]], measure: str) -> dict[str, float]:
    """``measure`` of each judged query of ``run`` (a query without hits scores 0)."""
    scored = {qid: {h.doc_id: h.score for h in hits} for qid, hits in run.items()}
    values = {qid: 0.0 for qid in qrels}
    for metric in ir_measures.iter_calc([ir_measures.parse_measure(measure)], qrels, scored):
        values[metric.query_id] = float(metric.value)
    return values


def paired_change(
    before: dict[str, float], after: dict[str, float], *, level: float = 0.95, resamples: int = 2000
) -> Change:
    """The mean per-query change from ``before`` to ``after`` (same query ids) and its bootstrap interval."""
    if before.keys() != after.keys():
        raise ValueError("paired scores need the same queries")
    diff = np.array([after[q] - before[q] for q in before])
    mean = float(diff.mean())
    if len(diff) < 2 or np.all(diff == diff[0]):  # no spread: the interval is the point
        return Change(mean, mean, mean, len(diff))
    result = stats.bootstrap(
        (diff,), np.mean, confidence_level=level, n_resamples=resamples, rng=np.random.default_rng(0)
    )
    interval = result.confidence_interval
    return Change(mean, float(interval.low), float(interval.high), len(diff))
