"""The draft length is picked from measured verification costs and the modelled acceptance."""

from __future__ import annotations

import doctest

import pytest

import rag.bench.draft_length
from rag.bench.draft_length import CANDIDATES, forward_seconds, measured_draft_tokens


def test_docstring_examples() -> None:
    assert doctest.testmod(rag.bench.draft_length).failed == 0


@pytest.mark.parametrize(
    ("costs", "expected"),
    [
        ({2: 1.2, 4: 1.4, 8: 2.2, 16: 3.5}, 3),  # a 4-node tree cheap, longer ones dear (the EPYC host)
        ({2: 1.0, 4: 2.0, 8: 2.0, 16: 2.0}, 15),  # 4 to 16 nodes cost the same (the Xeon host)
        ({2: 1.0, 4: 3.0, 8: 4.0, 16: 6.0}, 1),  # only a two-row forward is cheap
    ],
)
def test_the_length_with_the_most_expected_tokens_per_second_wins(
    costs: dict[int, float], expected: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rag.bench.draft_length, "forward_seconds", lambda model, rows: costs)
    assert measured_draft_tokens(object()) == expected


def test_bad_candidates_are_refused() -> None:
    with pytest.raises(ValueError, match=">= 1"):
        measured_draft_tokens(object(), candidates=(0, 3))
    with pytest.raises(ValueError, match=">= 1"):
        measured_draft_tokens(object(), candidates=())


def test_forward_seconds_times_each_row_count_on_a_real_model(smollm2) -> None:
    model, _ = smollm2
    rows = [d + 1 for d in CANDIDATES]
    seconds = forward_seconds(model, rows, cached=32, repeats=2)
    assert sorted(seconds) == rows
    assert all(0 < s < 60 for s in seconds.values())
    assert measured_draft_tokens(model) in CANDIDATES
