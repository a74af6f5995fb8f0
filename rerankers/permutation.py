"""Read a ranking such as ``"[2] > [3] > [1]"`` back from a model's text, repairing whatever is malformed.

>>> parse_permutation("[2] > [3] > [1]", 3)
[1, 2, 0]
>>> parse_permutation("[2] > [2] > [9] > garbage", 3)  # repeat and unknown id dropped, 1 and 3 appended
[1, 0, 2]
"""

from __future__ import annotations

import re
import string

# "[12]" or "[B]": an identifier in square brackets, spaces allowed inside.
_BRACKETED = re.compile(r"\[\s*([0-9]+|[A-Za-z])\s*\]")
_BARE_NUMBER = re.compile(r"\b([0-9]+)\b")

LETTERS = string.ascii_uppercase


def identifier_index(identifier: str, numeric: bool = True) -> int | None:
    """The 0-based position an identifier names: ``"3" -> 2`` (numeric) or ``"C" -> 2`` (letters)."""
    if numeric:
        return int(identifier) - 1 if identifier.isdigit() else None
    upper = identifier.upper()
    return LETTERS.index(upper) if len(upper) == 1 and upper in LETTERS else None


def parse_permutation(text: str, count: int, *, numeric: bool = True) -> list[int]:
    """A permutation of ``range(count)`` read from ``text``, most relevant first; never loses a candidate.

    Bracketed identifiers are read in order of appearance (bare numbers when the text has no brackets and
    ``numeric``); identifiers outside ``1..count`` (or ``A..``) and repeats are dropped, and candidates the
    text never names are appended in their original order.
    """
    found = _BRACKETED.findall(text)
    if not found and numeric:
        found = _BARE_NUMBER.findall(text)
    order: dict[int, None] = {}  # insertion-ordered set
    for identifier in found:
        index = identifier_index(identifier, numeric)
        if index is not None and 0 <= index < count:
            order.setdefault(index)
    order.update(dict.fromkeys(i for i in range(count) if i not in order))
    return list(order)
