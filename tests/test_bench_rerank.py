"""``rag bench rerank``: the report arithmetic (the suite itself needs the SciFact index and hours of CPU)."""

from __future__ import annotations

import pytest

from rag.bench import SUITES
from rag.bench.rerank import Measured, _load_saved, _save, _speed_rows, _table, first_stage_runs, run
from rag.errors import ConfigError
from rag.eval.significance import Change


def _change(before: float, after: float) -> Change:
    return Change(after - before, after - before - 0.05, after - before + 0.05, 100)


def test_the_suite_is_registered() -> None:
    assert SUITES["rerank"]() is run


def test_each_method_is_timed_against_listwise_of_the_same_model_and_first_stage() -> None:
    measured = [
        Measured("m", "bm25", "listwise", 0.5, 0.5, 9000.0, 90.0, _change(0.5, 0.5)),
        Measured("m", "bm25", "first", 0.5, 0.6, 3000.0, 1.0, _change(0.5, 0.6)),
        Measured("m", "dense", "listwise", 0.4, 0.4, 6000.0, 90.0, _change(0.4, 0.4)),
        Measured("m", "dense", "icr", 0.4, 0.3, 1000.0, 2.0, _change(0.4, 0.3)),
        Measured("m", "dense", "pointwise", 0.4, 0.5, 2000.0, 20.0, _change(0.4, 0.5)),
    ]
    rows = {r.measure: r for r in _speed_rows(measured, depth=20)}
    assert set(rows) == {
        "m, bm25 top-20: first ms/query (vs listwise)",
        "m, dense top-20: icr ms/query (vs listwise)",
        "m, dense top-20: pointwise ms/query (vs listwise)",
    }
    assert rows["m, bm25 top-20: first ms/query (vs listwise)"].ratio == pytest.approx(1 / 3)
    assert rows["m, dense top-20: icr ms/query (vs listwise)"].ratio == pytest.approx(1 / 6)
    assert "5×" in rows["m, dense top-20: icr ms/query (vs listwise)"].target
    assert rows["m, dense top-20: pointwise ms/query (vs listwise)"].target == ""
    table = _table(measured).splitlines()
    assert len(table) == 2 + len(measured)
    assert table[3] == "| m | bm25 | first | 50.0 | 60.0 | +10.0 [+5.0, +15.0] | 3,000 | 1.0 |"


def test_an_unknown_first_stage_is_refused() -> None:
    with pytest.raises(ConfigError, match="unknown first stage"):
        first_stage_runs({"q": "text"}, depth=5, stages=("splade",))


def test_a_saved_measurement_is_taken_back_only_for_the_same_queries_and_depth(tmp_path) -> None:
    saved = tmp_path / "rerank.jsonl"
    first = Measured("m", "fusion", "first", 0.7, 0.72, 3000.0, 1.0, _change(0.7, 0.72))
    _save(saved, first, queries=100, depth=20)
    _save(saved, Measured("m", "bm25", "icr", 0.6, 0.5, 9.0, 2.0, _change(0.6, 0.5)), queries=5, depth=20)
    assert _load_saved(saved, queries=100, depth=20) == {("m", "fusion", "first"): first}
    assert _load_saved(saved, queries=100, depth=50) == {}
    assert _load_saved(tmp_path / "missing.jsonl", queries=100, depth=20) == {}
