"""The demo corpus installed with ragloom, and the question ``make demo`` asks of it.

82 passages of The World Factbook (public domain; ATTRIBUTION.md beside this file): the background of every
country and territory of Europe, one paragraph each.

>>> from rag.demo import DEMO_QUESTION, corpus_path
>>> corpus_path().name, DEMO_QUESTION
('factbook-europe.jsonl', 'When was the Swiss Confederation founded?')
"""

from __future__ import annotations

from pathlib import Path

CORPUS_FILE = "factbook-europe.jsonl"

DEMO_QUESTION = "When was the Swiss Confederation founded?"
DEMO_ANSWER = "1291"  # stated in one passage only
DEMO_PASSAGE_ID = "switzerland-1"  # the passage that states it


def corpus_path() -> Path:
    """The demo corpus, a JSON-lines file (``id``, ``title``, ``text``) inside the installed package."""
    return Path(__file__).with_name(CORPUS_FILE)
