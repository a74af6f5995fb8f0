"""Per-query scores and the paired bootstrap interval of a change (rag.eval.significance)."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

import rag.eval.significance
from rag.eval.retrieval import score_run
from rag.eval.significance import paired_change, per_query
from rag.types import Hit


def test_docstring_examples() -> None:
    assert doctest.testmod(rag.eval.significance).failed == 0


def test_per_query_scores_average_to_the_aggregate_and_missing_queries_score_zero() -> None:
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}, "q3": {"c": 1}}

    def hits(*ids: str) -> list[Hit]:
        return [Hit(doc_id, 1.0 / rank, rank, "test") for rank, doc_id in enumerate(ids, start=1)]

    run = {"q1": hits("a", "x"), "q2": hits("x", "b")}  # q3: no hits
    scores = per_query(run, qrels, "nDCG@10")
    assert scores["q1"] == 1.0 and 0 < scores["q2"] < 1 and scores["q3"] == 0.0
    assert np.mean(list(scores.values())) == pytest.approx(score_run(run, qrels, ["nDCG@10"])["nDCG@10"])


def test_the_interval_holds_zero_for_noise_and_not_for_a_consistent_gain() -> None:
    rng = np.random.default_rng(1)
    before = {f"q{i}": float(v) for i, v in enumerate(rng.uniform(0, 1, 200))}
    noise = {q: v + float(rng.normal(0, 0.1)) for q, v in before.items()}
    gain = {q: v + 0.05 + float(rng.normal(0, 0.02)) for q, v in before.items()}
    assert paired_change(before, noise).low < 0 < paired_change(before, noise).high
    change = paired_change(before, gain)
    assert 0 < change.low < 0.05 < change.high and change.queries == 200
    with pytest.raises(ValueError, match="same queries"):
        paired_change(before, {"q0": 1.0})
