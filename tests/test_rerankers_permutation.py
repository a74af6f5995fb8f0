"""The permutation parser repairs any model output; sliding windows cover the list from back to front."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rag.errors import ConfigError
from rag.rerankers.listwise_base import ListwiseConfig, sliding_windows
from rag.rerankers.permutation import parse_permutation


def test_clean_ranking_is_read_in_order():
    assert parse_permutation("[2] > [3] > [1]", 3) == [1, 2, 0]
    assert parse_permutation("[ 2 ]>[1]>[3]", 3) == [1, 0, 2]


def test_repeated_ids_are_dropped():
    assert parse_permutation("[3] > [3] > [1] > [3] > [2]", 3) == [2, 0, 1]


def test_unknown_ids_are_dropped():
    assert parse_permutation("[0] > [4] > [2] > [17] > [1] > [3]", 3) == [1, 0, 2]


def test_missing_ids_are_appended_in_original_order():
    assert parse_permutation("[4]", 5) == [3, 0, 1, 2, 4]


def test_garbage_gives_the_original_order():
    assert parse_permutation("I cannot rank these passages, sorry!", 4) == [0, 1, 2, 3]
    assert parse_permutation("", 3) == [0, 1, 2]
    assert parse_permutation("[] > [x] > [[", 3) == [0, 1, 2]


def test_bare_numbers_are_read_when_there_are_no_brackets():
    assert parse_permutation("2 > 3 > 1", 3) == [1, 2, 0]


def test_letter_identifiers():
    assert parse_permutation("[C] > [a] > [Z] > [C]", 3, numeric=False) == [2, 0, 1]


@given(st.text(alphabet="[]>0123456789 ABCx,", max_size=80), st.integers(min_value=1, max_value=30))
def test_any_text_gives_a_permutation(text, count):
    assert sorted(parse_permutation(text, count)) == list(range(count))


def test_windows_over_25_candidates_with_window_10_stride_5():
    assert sliding_windows(25, window=10, stride=5) == [(15, 25), (10, 20), (5, 15), (0, 10)]


def test_front_window_is_full_when_the_stride_does_not_divide():
    assert sliding_windows(23, window=10, stride=5) == [(13, 23), (8, 18), (3, 13), (0, 10)]


def test_short_lists_get_one_window():
    assert sliding_windows(7, window=10, stride=5) == [(0, 7)]
    assert sliding_windows(10, window=10, stride=5) == [(0, 10)]
    assert sliding_windows(0, window=10, stride=5) == []


@given(st.integers(1, 120), st.integers(2, 30), st.data())
def test_windows_cover_every_candidate_and_end_at_the_front(count, window, data):
    stride = data.draw(st.integers(1, window))
    spans = sliding_windows(count, window, stride)
    assert spans[0][1] == count and spans[-1][0] == 0
    assert all(end - start == min(window, count) for start, end in spans)
    covered = {i for start, end in spans for i in range(start, end)}
    assert covered == set(range(count))


def test_bad_window_options_are_config_errors():
    with pytest.raises(ConfigError, match="stride"):
        ListwiseConfig(window=10, stride=11)
    with pytest.raises(ConfigError, match="window"):
        ListwiseConfig(window=1, stride=1)
