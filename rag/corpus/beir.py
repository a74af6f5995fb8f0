"""BEIR data sets: ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/{split}.tsv`` in one folder.

>>> docs = list(read_beir("data/scifact"))  # doctest: +SKIP
>>> queries = read_beir_queries("data/scifact")  # doctest: +SKIP
>>> queries["0"]  # doctest: +SKIP
'0-dimensional biomaterials lack inductive properties.'
>>> qrels = read_beir_qrels("data/scifact", "test")  # doctest: +SKIP
>>> qrels["1"]  # query id -> {doc id: relevance}  # doctest: +SKIP
{'31715818': 1}
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from rag.corpus.jsonl import SeenIds, iter_json_lines, read_jsonl
from rag.errors import CorpusError
from rag.types import Document


def read_beir(folder: str | Path) -> Iterator[Document]:
    """Yield the documents of ``folder/corpus.jsonl`` (fields ``_id``, ``title``, ``text``, ``metadata``)."""
    return read_jsonl(_existing(Path(folder) / "corpus.jsonl"))


def read_beir_queries(folder: str | Path) -> dict[str, str]:
    """Read ``folder/queries.jsonl`` into ``{query id: text}``, in file order."""
    path = _existing(Path(folder) / "queries.jsonl")
    seen = SeenIds(path, "query id")
    queries: dict[str, str] = {}
    for lineno, record in iter_json_lines(path):
        qid, text = record.get("_id"), record.get("text")
        if not isinstance(qid, str) or not qid:
            raise CorpusError(f"{path}:{lineno}: missing or non-string query '_id'")
        if not isinstance(text, str) or not text.strip():
            raise CorpusError(f"{path}:{lineno}: query {qid!r} has no 'text'")
        seen.add(qid, f"line {lineno}")
        queries[qid] = text
    return queries


def read_beir_qrels(folder: str | Path, split: str = "test") -> dict[str, dict[str, int]]:
    """Read ``folder/qrels/{split}.tsv`` into ``{query id: {doc id: relevance}}``.

    The file is tab-separated ``query-id corpus-id score`` with a header line; CRLF line endings (as in the
    BEIR release) are accepted.
    """
    path = _existing(Path(folder) / "qrels" / f"{split}.tsv")
    raw = path.read_bytes()
    try:
        lines = raw.decode("utf-8-sig").split("\n")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise CorpusError(f"{path}:{line}: not valid UTF-8") from None
    qrels: dict[str, dict[str, int]] = {}
    for lineno, line in enumerate(lines, 1):
        fields = line.rstrip("\r").split("\t")
        if fields == [""]:
            continue
        if len(fields) != 3:
            raise CorpusError(f"{path}:{lineno}: expected 3 tab-separated fields, got {len(fields)}")
        qid, doc_id, score = fields
        if lineno == 1 and qid == "query-id":
            continue  # header
        try:
            relevance = int(score)
        except ValueError:
            raise CorpusError(f"{path}:{lineno}: relevance must be an integer, got {score!r}") from None
        judged = qrels.setdefault(qid, {})
        if doc_id in judged:
            raise CorpusError(f"{path}:{lineno}: duplicate judgment for query {qid!r}, document {doc_id!r}")
        judged[doc_id] = relevance
    return qrels


def _existing(path: Path) -> Path:
    if not path.is_file():
        raise CorpusError(f"corpus not found: {path}")
    return path
