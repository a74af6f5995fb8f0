"""Limits on what a request may ask, shared by the server (its defaults) and the command line.

>>> check_length("What is ragloom?", "question")
>>> check_length("x" * 3_000, "question")
Traceback (most recent call last):
...
rag.errors.ConfigError: the question has 3000 characters; the limit is 2000
"""

from __future__ import annotations

from rag.errors import ConfigError

MAX_QUERY_CHARS = 2_000  # a query or question; longer ones cost minutes of prefill for no better answer


def check_length(text: str, what: str, limit: int = MAX_QUERY_CHARS) -> None:
    if len(text) > limit:
        raise ConfigError(f"the {what} has {len(text)} characters; the limit is {limit}")
