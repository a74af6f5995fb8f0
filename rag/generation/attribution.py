"""Which passages support an answer, found by span overlap rather than read from the model's ``[n]`` markers.

Small models often leave out the markers, or write one that points at the wrong passage. Attribution does not
depend on them:

1. the answer is cut into statements (sentences and ``;`` clauses; a short extractive answer is one statement)
   and its ``[n]`` markers are set aside;
2. each passage's support for a statement is the share of the statement's content words found in the passage
   (words the question already holds are context, not new information, and are left out when others remain);
   tokens are lower-cased ``\\w+`` runs without the articles a/an/the, as in SQuAD's normalisation;
3. a passage cites a statement only from ``threshold`` support up. The best passage wins: most support, then
   the longest run of the statement's tokens found verbatim, then the most question words near that run (an
   answer string found in several passages goes to the one that also matches the question), then the
   model's own marker, then rank;
4. the model's marker thus counts only where the passages' text cannot decide: a marker on a passage without
   support, or with less of it, is overruled;
5. when the first passage leaves content words uncovered, a second passage that holds them is cited too;
6. a statement that says it does not know cites nothing.

:func:`marked` rewrites the answer's markers to the attributed ones, so a UI shows the model's own marker only
where it agrees. Pure Python, well under a millisecond per answer.

>>> from rag.types import Document
>>> docs = [
...     Document("bio", "Marie Curie was born in Warsaw in 1867."),
...     Document("prize", "In 1903 Marie Curie shared the Nobel Prize in Physics."),
... ]
>>> text = "She was born in Warsaw [2]. She won the Nobel Prize in 1903 [2]."
>>> result = attribute(text, docs, "Where was Marie Curie born, and what did she win?")
>>> result.citations
['bio', 'prize']
>>> [(text[s.start : s.end], s.passages) for s in result.statements]
[('She was born in Warsaw [2].', (1,)), ('She won the Nobel Prize in 1903 [2].', (2,))]
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from difflib import SequenceMatcher

from rag.types import Document

# A passage must hold at least this share of a statement's content words to be cited for it.
SUPPORT_THRESHOLD = 0.5
_WINDOW = 20  # tokens each side of the matched run in which question words count as context
_MIN_GAIN = 0.25  # share of the statement's content words a second passage must add to be cited too

_WORD = re.compile(r"\w+")
_MARKER = re.compile(r"\[\s*(\d+(?:\s*,\s*\d+)*)\s*\]")
_SPACED_MARKER = re.compile(r"\s*\[\s*\d+(?:\s*,\s*\d+)*\s*\]")
# A statement ends at . ! ? ; (with closing quotes/brackets and the markers after it) followed by white space,
# or at a line break. Only after a lower-case letter, digit or closing bracket, so "U.S. Army" stays whole.
_BOUNDARY = re.compile(
    r"(?:(?<=[a-z0-9)\]\"'])[.!?;][\"')\]]*(?:\s*\[\s*\d+(?:\s*,\s*\d+)*\s*\])*[ \t]+|\s*\n\s*)"
)
_ABSTAINS = re.compile(
    r"\b(?:(?:do|does|did|can)\s*n[o']?t|cannot|unable to)\s+(?:know|answer|find|determine|say|tell)\b"
    r"|\bnot\s+(?:mentioned|stated|provided|given|specified|contained)\b|\bno\s+(?:information|mention)\b",
    re.IGNORECASE,
)
_ARTICLES = frozenset({"a", "an", "the"})
# Words that carry no claim of their own: function words and the words answers use about the passages.
_FUNCTION_WORDS = """
    about above after again against all also am and any are as at be because been before being below
    between both but by can could did do does doing down during each few for from further had has have having
    he her here hers herself him himself his how i if in into is it its itself just me more most my myself no
    nor not of off on once only or other our ours out over own same she should so some such than that their
    theirs them themselves then there these they this those through to too under until up very was we were
    what when where which while who whom why will with would you your yours yes according answer based
    context mentioned passage passages provided question says state stated states text"""
_STOPWORDS = _ARTICLES | frozenset(_FUNCTION_WORDS.split())


@dataclass(frozen=True, slots=True)
class Statement:
    """One statement of the answer: its character span (markers included) and the passages it cites."""

    start: int
    end: int
    passages: tuple[int, ...]  # 1-based passage numbers, first = best support; () = unsupported


@dataclass(frozen=True, slots=True)
class Attribution:
    """The statements of an answer and the doc ids they cite, in order of first citation."""

    statements: tuple[Statement, ...]
    citations: list[str]


def attribute(
    answer: str,
    passages: Sequence[Document],
    question: str = "",
    *,
    threshold: float = SUPPORT_THRESHOLD,
) -> Attribution:
    """Attribute each statement of ``answer`` to the passages (numbered from 1) that support it."""
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    passage_tokens = [_tokens(doc.contents) for doc in passages]
    question_words = {t for t in _tokens(question) if t not in _STOPWORDS}
    statements = []
    cited: dict[str, None] = {}  # insertion-ordered set
    for start, end in split_statements(answer):
        span = answer[start:end]
        numbers = _passages_for(span, passage_tokens, question_words, threshold)
        statements.append(Statement(start, end, numbers))
        for n in numbers:
            cited.setdefault(passages[n - 1].id)
    return Attribution(tuple(statements), list(cited))


def split_statements(text: str) -> list[tuple[int, int]]:
    """Character spans of the statements of ``text``; spans without a word are dropped.

    >>> text = "Paris is the capital [1]. It lies on the Seine; it has 2 million people."
    >>> [text[a:b] for a, b in split_statements(text)]
    ['Paris is the capital [1].', 'It lies on the Seine;', 'it has 2 million people.']
    """
    spans, start = [], 0
    for boundary in _BOUNDARY.finditer(text):
        spans.append((start, boundary.end()))
        start = boundary.end()
    spans.append((start, len(text)))
    trimmed = []
    for a, b in spans:
        piece = text[a:b]
        a, b = a + len(piece) - len(piece.lstrip()), b - (len(piece) - len(piece.rstrip()))
        if _WORD.search(_MARKER.sub(" ", text[a:b])):
            trimmed.append((a, b))
    return trimmed


def marked(answer: str, attribution: Attribution) -> str:
    """``answer`` with the model's markers replaced by the attributed ones, at the end of each statement.

    A marker the model wrote stays only where attribution agrees with it; an unsupported statement shows none.

    >>> docs = [Document("a", "Lyon is on the Rhone."), Document("b", "Paris is the capital of France.")]
    >>> text = "Paris is the capital [1]. I do not know the rest [2]."
    >>> marked(text, attribute(text, docs))
    'Paris is the capital [2]. I do not know the rest.'
    """
    pieces, end = [], 0
    for statement in attribution.statements:
        body = _SPACED_MARKER.sub("", answer[statement.start : statement.end])
        stop = len(body.rstrip(".!?;"))
        numbers = "".join(f"[{n}]" for n in statement.passages)
        body = f"{body[:stop]} {numbers}{body[stop:]}" if numbers else body
        pieces += [answer[end : statement.start], body]
        end = statement.end
    return "".join(pieces) + _SPACED_MARKER.sub("", answer[end:])


def _passages_for(
    statement: str, passages: list[list[str]], question_words: set[str], threshold: float
) -> tuple[int, ...]:
    """1-based numbers of the passages cited for one statement: the model's agreeing markers or the best."""
    if _ABSTAINS.search(statement):
        return ()
    tokens = _tokens(_MARKER.sub(" ", statement))
    content = {t for t in tokens if t not in _STOPWORDS} or set(tokens)
    if not content:
        return ()
    claim = content - question_words or content  # what the statement adds to the question
    scores = [_score(tokens, claim, p, question_words) for p in passages]
    supporting = [i for i, s in enumerate(scores) if s[0] >= threshold]
    if not supporting:
        return ()
    markers = {n - 1 for n in _marker_numbers(statement)}
    # the model's marker only breaks a tie that support, the verbatim run and the question leave
    best = max(supporting, key=lambda i: (*scores[i], i in markers, -i))
    chosen = [best]
    covered = set().union(*(claim & set(passages[i]) for i in chosen))
    missing = claim - covered
    if missing:  # a second passage for the content words the first leaves out
        gain = {i: len(missing & set(p)) for i, p in enumerate(passages) if i not in chosen}
        best = max(gain, key=lambda i: (gain[i], *scores[i], -i), default=None)
        if best is not None and gain[best] >= max(1.0, _MIN_GAIN * len(claim)):
            chosen.append(best)
    return tuple(i + 1 for i in chosen)


def _score(
    tokens: list[str], claim: set[str], passage: list[str], question_words: set[str]
) -> tuple[float, int, int]:
    """``(support, longest verbatim run, question words near that run)`` of one passage for a statement."""
    if not passage:
        return 0.0, 0, 0
    support = len(claim & set(passage)) / len(claim)
    match = SequenceMatcher(None, tokens, passage, autojunk=False).find_longest_match()
    near = passage[max(0, match.b - _WINDOW) : match.b + match.size + _WINDOW] if match.size else passage
    return support, match.size, len(question_words & set(near))


def _marker_numbers(text: str) -> list[int]:
    return [int(n) for m in _MARKER.finditer(text) for n in m.group(1).split(",")]


def _tokens(text: str) -> list[str]:
    return [t for t in _WORD.findall(text.casefold()) if t not in _ARTICLES]
