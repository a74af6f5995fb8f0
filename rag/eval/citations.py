"""Citation evaluation on judged queries (BEIR): do an answer's citations point at passages judged relevant?

BEIR sets such as SciFact judge which documents support (or refute) a claim but give no answer to score, so
this measures the citations alone: for each judged query the pipeline answers, and a citation is *grounded*
when the cited document is judged relevant to the query. The figure that matters is the share of answers
whose first citation is relevant, among the answers that cite something while a relevant document was among
their passages (without one, no citation can be right).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from rag.eval.retrieval import judged_queries
from rag.generation.base import GenerationParams
from rag.pipeline import Pipeline


@dataclass(frozen=True)
class CitationRecord:
    query_id: str
    query: str
    answer: str
    passages: list[str]  # ids given to the generator, in rank order
    cited: list[str]  # ids the answer cites, first = best supported
    relevant: list[str]  # ids judged relevant to the query

    @property
    def relevant_retrieved(self) -> bool:
        return any(doc_id in self.relevant for doc_id in self.passages)

    @property
    def first_citation_relevant(self) -> bool:
        return bool(self.cited) and self.cited[0] in self.relevant


@dataclass(frozen=True)
class CitationReport:
    records: list[CitationRecord]

    @property
    def answerable(self) -> list[CitationRecord]:
        """Answers that cite something while a relevant document was among their passages."""
        return [r for r in self.records if r.relevant_retrieved and r.cited]

    @property
    def first_citation_relevant(self) -> float | None:
        """% of the answerable answers whose first citation is judged relevant (None: none answerable)."""
        answerable = self.answerable
        return 100 * statistics.fmean(r.first_citation_relevant for r in answerable) if answerable else None

    @property
    def cited_any(self) -> float:
        """% of all answers that cite at least one passage."""
        return 100 * statistics.fmean(bool(r.cited) for r in self.records)

    @property
    def relevant_retrieved(self) -> float:
        return 100 * statistics.fmean(r.relevant_retrieved for r in self.records)


def evaluate_citations(
    pipeline: Pipeline,
    beir_folder: str | Path,
    *,
    split: str = "test",
    limit: int | None = None,
    params: GenerationParams | None = None,
    progress: bool = True,
) -> CitationReport:
    """Answer the first ``limit`` judged queries of ``split`` with ``pipeline`` and check their citations."""
    queries, qrels = judged_queries(beir_folder, split, limit)
    records = []
    for query_id, text in tqdm(queries.items(), desc="answer", unit="q", disable=not progress):
        answer = pipeline.answer(text, params)
        relevant = [doc_id for doc_id, grade in qrels[query_id].items() if grade > 0]
        records.append(
            CitationRecord(
                query_id, text, answer.text, [p.id for p in answer.passages], list(answer.citations), relevant
            )
        )
    return CitationReport(records)
