"""Retrieval evaluation on a BEIR folder with ir-measures (nDCG@10, Recall@100, MRR@10 by default).

    >>> report = evaluate_retrieval(retriever, "data/scifact")  # doctest: +SKIP
    >>> report.metrics["nDCG@10"]  # doctest: +SKIP

With ``reranker=`` the top ``rerank_depth`` hits of every query are reranked and the reranked run is scored;
``report.retriever_metrics`` keeps the scores before reranking.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import ir_measures
from tqdm.auto import tqdm

from rag.corpus import read_beir_qrels, read_beir_queries
from rag.errors import ConfigError, CorpusError
from rag.indexes.base import Retriever
from rag.rerankers.base import DocumentSource, Reranker
from rag.rerankers.run import rerank_run
from rag.types import Hit

DEFAULT_MEASURES = ("nDCG@10", "R@100", "RR@10")


@dataclass(frozen=True)
class RetrievalReport:
    metrics: dict[str, float]  # measure name -> mean over queries (of the reranked run when reranked)
    queries: int
    seconds: float  # searching
    retriever_metrics: dict[str, float] | None = None  # before reranking; None when nothing was reranked
    rerank_seconds: float = 0.0

    @property
    def ms_per_query(self) -> float:
        return 1000 * self.seconds / max(self.queries, 1)

    @property
    def rerank_ms_per_query(self) -> float:
        return 1000 * self.rerank_seconds / max(self.queries, 1)


def run_queries(
    retriever: Retriever, queries: dict[str, str], k: int = 100, batch_size: int = 64, progress: bool = True
) -> dict[str, list[Hit]]:
    """Search every query; returns query id -> hits."""
    ids = list(queries)
    run: dict[str, list[Hit]] = {}
    for start in tqdm(range(0, len(ids), batch_size), desc="search", unit="batch", disable=not progress):
        batch = ids[start : start + batch_size]
        for qid, hits in zip(batch, retriever.search([queries[q] for q in batch], k=k), strict=True):
            run[qid] = hits
    return run


def score_run(
    run: dict[str, list[Hit]], qrels: dict[str, dict[str, int]], measures: Sequence[str] = DEFAULT_MEASURES
) -> dict[str, float]:
    parsed = [ir_measures.parse_measure(m) for m in measures]
    scored = {qid: {h.doc_id: h.score for h in hits} for qid, hits in run.items()}
    aggregate = ir_measures.calc_aggregate(parsed, qrels, scored)
    return {str(m): float(aggregate[m]) for m in parsed}


def write_trec_run(run: dict[str, list[Hit]], path: str | Path, tag: str = "ragloom") -> None:
    with open(path, "w") as out:
        for qid, hits in run.items():
            for hit in hits:
                out.write(f"{qid} Q0 {hit.doc_id} {hit.rank} {hit.score:.6f} {tag}\n")


def judged_queries(
    beir_folder: str | Path, split: str = "test", limit: int | None = None
) -> tuple[dict[str, str], dict[str, dict[str, int]]]:
    """Text and qrels of the judged queries of ``split``, in qrels order (the first ``limit`` when given)."""
    if limit is not None and limit < 1:
        raise ConfigError(f"the query limit must be at least 1, got {limit}")
    qrels = read_beir_qrels(beir_folder, split)
    all_queries = read_beir_queries(beir_folder)
    missing = sorted(set(qrels) - set(all_queries))
    if missing:
        raise CorpusError(f"{beir_folder}: {len(missing)} judged queries have no text, e.g. {missing[0]!r}")
    chosen = list(qrels)[:limit] if limit is not None else list(qrels)
    return {qid: all_queries[qid] for qid in chosen}, {qid: qrels[qid] for qid in chosen}


def evaluate_retrieval(
    retriever: Retriever,
    beir_folder: str | Path,
    *,
    split: str = "test",
    k: int = 100,
    measures: Sequence[str] = DEFAULT_MEASURES,
    run_path: str | Path | None = None,
    progress: bool = True,
    limit: int | None = None,
    reranker: Reranker | None = None,
    docstore: DocumentSource | None = None,
    rerank_depth: int = 20,
) -> RetrievalReport:
    """Search the judged queries of ``split`` (the first ``limit``) and score the run against its qrels.

    With a ``reranker``, the first ``rerank_depth`` hits of each query are reranked (reading their text from
    ``docstore`` when the reranker has none) and the reranked run is the one scored and written.
    """
    if reranker is not None and not 1 <= rerank_depth <= k:
        raise ConfigError(f"the rerank depth must be between 1 and the search depth {k}, got {rerank_depth}")
    queries, qrels = judged_queries(beir_folder, split, limit)
    start = time.perf_counter()
    run = run_queries(retriever, queries, k=k, progress=progress)
    seconds = time.perf_counter() - start
    retriever_metrics, rerank_seconds = None, 0.0
    if reranker is not None:
        retriever_metrics = score_run(run, qrels, measures)
        start = time.perf_counter()
        run = rerank_run(reranker, run, queries, docstore, depth=rerank_depth, progress=progress)
        rerank_seconds = time.perf_counter() - start
    if run_path is not None:
        write_trec_run(run, run_path)
    return RetrievalReport(
        score_run(run, qrels, measures), len(queries), seconds, retriever_metrics, rerank_seconds
    )
