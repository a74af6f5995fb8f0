"""Suite ``rerank``: the LLM rerankers on the dense top-20 of SciFact test queries, one model, one run.

For each reranker: nDCG@10 of the dense run before and after reranking its top ``depth`` hits, milliseconds
and model forward passes per query. All rerankers share one loaded model and the same queries, prompts
and passage budget. LLM reranking is slow on a CPU, so only the first ``queries`` judged test queries are
used (default 30 of 300); the table says how many.

    rag bench rerank                       # the defaults below
    python -c "from rag.bench.rerank import run; print(run(queries=10).markdown())"
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

from rag.bench.report import Row, SuiteResult
from rag.collection import build_index
from rag.corpus import read_beir_qrels, read_beir_queries
from rag.docstore import Docstore
from rag.eval.retrieval import run_queries, score_run
from rag.indexes import Retriever, load_index
from rag.models import load_causal_lm
from rag.registry import lookup
from rag.rerankers.run import rerank_run
from rag.settings import cache_dir, data_dir

RERANKERS = ("listwise", "first", "icr", "pointwise")
MEASURE = "nDCG@10"


def scifact_dense_index() -> Retriever:
    """MiniLM + exact (Flat) index of SciFact, built once into the cache (a few minutes on a CPU)."""
    collection = cache_dir() / "bench" / "scifact-minilm"
    if not (collection / "dense" / "manifest.json").is_file():
        config = {"factory": "Flat", "show_progress": False}
        build_index(data_dir() / "scifact", collection, name="dense", kind="dense", config=config, fmt="beir")
    return load_index(collection / "dense")


def run(
    queries: int = 30,
    depth: int = 20,
    model: str = "qwen2.5-0.5b-instruct",
    rerankers: Sequence[str] = RERANKERS,
    passage_tokens: int = 64,
    window: int = 20,
    stride: int = 10,
) -> SuiteResult:
    """Rerank the dense top-``depth`` of the first ``queries`` SciFact test queries with each reranker."""
    load = os.getloadavg()[0]
    scifact = data_dir() / "scifact"
    qrels = read_beir_qrels(scifact, "test")
    texts = read_beir_queries(scifact)
    chosen = {qid: texts[qid] for qid in list(qrels)[:queries]}
    judged = {qid: qrels[qid] for qid in chosen}
    retriever = scifact_dense_index()
    dense = run_queries(retriever, chosen, k=depth, progress=False)
    before = score_run(dense, judged, [MEASURE])[MEASURE]
    lm, tokenizer = load_causal_lm(model)
    docstore = Docstore(retriever.docstore_path)  # type: ignore[attr-defined]

    measured: dict[str, tuple[float, float, float]] = {}  # name -> (nDCG@10, ms/query, passes/query)
    for name in rerankers:
        cls, config_cls = lookup("reranker", name)
        options = {"model": model, "passage_tokens": passage_tokens}
        if name in ("listwise", "first"):
            options |= {"window": window, "stride": stride}
        reranker = cls(config_cls(**options), model=lm, tokenizer=tokenizer, docstore=docstore)
        start = time.perf_counter()
        reranked = rerank_run(reranker, dense, chosen, depth=depth, progress=False)
        ms = 1000 * (time.perf_counter() - start) / len(chosen)
        after = score_run(reranked, judged, [MEASURE])[MEASURE]
        measured[name] = (after, ms, reranker.forward_passes / len(chosen))

    rows: list[Row] = []
    for name, (after, _, _) in measured.items():
        rows.append(Row(f"{name}: nDCG@10 ×100 (vs dense alone)", 100 * after, 100 * before, "", ""))
    base_ms, base_passes = measured.get("listwise", (0.0, 0.0, 0.0))[1:]
    targets = {"first": "<= 0.33× (3× faster)", "icr": "<= 0.20× (5× faster)"}
    for name, (_, ms, passes) in measured.items():
        rows.append(Row(f"{name}: ms/query (vs listwise)", ms, base_ms, "ms", targets.get(name, "")))
        rows.append(Row(f"{name}: forward passes/query (vs listwise)", passes, base_passes, "", ""))
    return SuiteResult(
        suite="rerank",
        title=f"LLM rerankers on SciFact: dense top-{depth} reranked by {model}",
        baseline="nDCG rows: the dense (MiniLM, Flat) ranking before reranking; time and pass rows: the "
        "listwise (RankGPT-style generating) reranker, same model, windows and passages",
        rows=rows,
        notes=[
            f"Only the first {len(chosen)} of {len(qrels)} SciFact test queries (LLM reranking on a CPU is "
            "slow): nDCG@10 differences of a few points are within noise at this size.",
            f"Passages cut to {passage_tokens} tokens; listwise and FIRST use window {window}, stride "
            f"{stride}; ICR puts all {depth} candidates in one prompt (two passes); pointwise one pass per "
            "candidate. A forward pass is one model call: listwise makes one per generated token.",
            f"1-minute load average when the run started: {load:.1f} (other processes share the CPU; "
            "ratios within this run are comparable, absolute times are not).",
            "Zero-shot, untrained prompts on a small instruct model: the reranked nDCG@10 shows what each "
            "method gets out of this model, not what the methods reach with trained or larger models.",
        ],
    )
