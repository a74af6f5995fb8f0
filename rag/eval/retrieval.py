"""Retrieval evaluation on a BEIR folder with ir-measures (nDCG@10, Recall@100, MRR@10 by default)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import ir_measures
from tqdm.auto import tqdm

from rag.corpus import read_beir_qrels, read_beir_queries
from rag.errors import CorpusError
from rag.indexes.base import Retriever
from rag.types import Hit

DEFAULT_MEASURES = ("nDCG@10", "R@100", "RR@10")


@dataclass(frozen=True)
class RetrievalReport:
    metrics: dict[str, float]  # measure name -> mean over queries
    queries: int
    seconds: float

    @property
    def ms_per_query(self) -> float:
        return 1000 * self.seconds / max(self.queries, 1)


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


def evaluate_retrieval(
    retriever: Retriever,
    beir_folder: str | Path,
    *,
    split: str = "test",
    k: int = 100,
    measures: Sequence[str] = DEFAULT_MEASURES,
    run_path: str | Path | None = None,
    progress: bool = True,
) -> RetrievalReport:
    """Search the judged queries of ``split`` and score the run against its qrels."""
    qrels = read_beir_qrels(beir_folder, split)
    all_queries = read_beir_queries(beir_folder)
    missing = sorted(set(qrels) - set(all_queries))
    if missing:
        raise CorpusError(f"{beir_folder}: {len(missing)} judged queries have no text, e.g. {missing[0]!r}")
    queries = {qid: all_queries[qid] for qid in qrels}
    start = time.perf_counter()
    run = run_queries(retriever, queries, k=k, progress=progress)
    seconds = time.perf_counter() - start
    if run_path is not None:
        write_trec_run(run, run_path)
    return RetrievalReport(score_run(run, qrels, measures), len(queries), seconds)
