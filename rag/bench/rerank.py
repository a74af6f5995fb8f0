"""Suite ``rerank``: the LLM rerankers on the BM25, dense and fused top-20 of SciFact test queries, per model.

For each installed model of ``models`` (loaded once, SDPA attention as the rerankers load it) and each
first stage (BM25, MiniLM Flat, and the best fusion of docs/retrievers.md: z-scores of BM25, SPLADE-tiny and
MiniLM, chosen on SciFact train): nDCG@10 before and after reranking the top ``depth`` hits with each
reranker, milliseconds and model forward passes per query. All rerankers share the model, the queries, the
prompts' passage budget and the windows. LLM reranking is slow on a CPU, so only the first ``queries``
judged test queries are used; the table says how many. ``saved`` names a JSON-lines file that keeps each
(model, stage, reranker) as it is measured: a run stopped part way goes on from there when started again.

    rag bench rerank                       # the defaults below (a model that is not installed is skipped)
    python -c "from rag.bench.rerank import run; print(run(queries=3).markdown())"
    python -c "from rag.bench.rerank import run; run(saved='rerank.jsonl')"   # hours: resumable
"""

from __future__ import annotations

import gc
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from rag.bench.report import Row, SuiteResult
from rag.collection import build_index
from rag.corpus import read_beir, read_beir_qrels, read_beir_queries
from rag.docstore import Docstore
from rag.errors import ConfigError
from rag.eval.retrieval import run_queries, score_run
from rag.eval.significance import Change, paired_change, per_query
from rag.indexes import Retriever, load_index
from rag.lm import load_causal_lm
from rag.models import bundled_model, install_hint, resolve_model
from rag.registry import lookup
from rag.rerankers.run import rerank_run
from rag.settings import cache_dir, data_dir
from rag.types import Hit

MODELS = ("qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct")
RERANKERS = ("listwise", "first", "icr", "pointwise")
STAGES = ("bm25", "dense", "fusion")
STAGE_NAMES = {"bm25": "BM25", "dense": "MiniLM", "fusion": "the best fusion"}
MEASURE = "nDCG@10"
TARGETS = {"first": "<= 0.33× (3× faster)", "icr": "<= 0.20× (5× faster)"}


@dataclass(frozen=True)
class Measured:
    model: str
    stage: str  # the first stage whose top-``depth`` is reranked
    reranker: str
    before: float  # nDCG@10 of the first stage alone
    after: float
    ms: float  # per query
    passes: float  # model forward passes per query
    change: Change  # per-query nDCG@10 after - before, with its 95% bootstrap interval


def scifact_dense_index() -> Retriever:
    """MiniLM + exact (Flat) index of SciFact, built once into the cache (a few minutes on a CPU)."""
    return _cached_scifact_index("scifact-minilm", "dense", {"factory": "Flat"})


def _cached_scifact_index(folder: str, kind: str, config: Mapping[str, object]) -> Retriever:
    collection = cache_dir() / "bench" / folder
    if not (collection / kind / "manifest.json").is_file():
        options = {**config, "show_progress": False}
        build_index(data_dir() / "scifact", collection, name=kind, kind=kind, config=options, fmt="beir")
    return load_index(collection / kind)


def first_stage_runs(
    queries: Mapping[str, str], depth: int, stages: Sequence[str] = STAGES
) -> tuple[dict[str, dict[str, list[Hit]]], Docstore]:
    """The top-``depth`` hits of each first stage (``bm25``, ``dense``, ``fusion``) for ``queries``, and the
    docstore."""
    from rag.indexes.bm25 import BM25Retriever
    from rag.indexes.hybrid import HybridConfig, HybridRetriever

    unknown = set(stages) - set(STAGES)
    if unknown:
        raise ConfigError(f"unknown first stage(s) {sorted(unknown)}; known: {', '.join(STAGES)}")
    dense = scifact_dense_index()
    bm25 = BM25Retriever()
    bm25.add(read_beir(data_dir() / "scifact"))
    runs = {}
    if "bm25" in stages:
        runs["bm25"] = run_queries(bm25, queries, k=depth, progress=False)
    if "dense" in stages:
        runs["dense"] = run_queries(dense, queries, k=depth, progress=False)
    if "fusion" in stages:  # docs/retrievers.md, "Best fusion": chosen on train, test nDCG@10 0.7435
        splade = _cached_scifact_index("scifact-splade", "splade", {})
        best = HybridConfig(method="zscore", weights=(0.4, 0.2, 0.4), fetch_k=200)
        fusion = HybridRetriever(best, parts=[bm25, splade, dense])
        runs["fusion"] = run_queries(fusion, queries, k=depth, progress=False)
    return runs, Docstore(dense.docstore_path)


def run(
    queries: int = 100,
    depth: int = 20,
    models: Sequence[str] = MODELS,
    rerankers: Sequence[str] | Mapping[str, Sequence[str]] = RERANKERS,
    stages: Sequence[str] = ("bm25", "fusion"),
    passage_tokens: int = 64,
    window: int = 20,
    stride: int = 10,
    progress: bool = True,
    saved: str | Path | None = None,
    measure: bool = True,
) -> SuiteResult:
    """Rerank each first stage's top ``depth`` for the first ``queries`` SciFact test queries, per model;
    ``rerankers`` may name the rerankers of each model (``{model: names}``); with ``measure=False`` the table
    holds what ``saved`` holds, and the notes name what it lacks."""
    chosen_rerankers = rerankers if isinstance(rerankers, Mapping) else dict.fromkeys(models, rerankers)
    per_model = {m: list(chosen_rerankers.get(m, ())) for m in models}
    load = os.getloadavg()[0]
    scifact = data_dir() / "scifact"
    qrels = read_beir_qrels(scifact, "test")
    texts = read_beir_queries(scifact)
    chosen = {qid: texts[qid] for qid in list(qrels)[:queries]}
    judged = {qid: qrels[qid] for qid in chosen}
    hints = {m: install_hint(m) for m in models}
    skipped = [f"{m}: not measured, {hint}." for m, hint in hints.items() if hint]
    skipped += [
        f"{m}: {', '.join(names)} only; not {', '.join(n for n in RERANKERS if n not in names)}."
        for m, names in per_model.items()
        if set(RERANKERS) - set(names) and not hints[m]
    ]
    measured_models = [m for m, hint in hints.items() if not hint]
    for model in measured_models:
        if bundled_model(model) is None:  # an unknown name fails here, before the first stage is built
            resolve_model(model)
    runs, docstore = first_stage_runs(chosen, depth, stages)
    before = {stage: score_run(hits, judged, [MEASURE])[MEASURE] for stage, hits in runs.items()}
    before_per_query = {stage: per_query(hits, judged, MEASURE) for stage, hits in runs.items()}

    done = _load_saved(saved, len(chosen), depth)
    measured: list[Measured] = []
    for model in measured_models:
        todo = [(st, n) for st in runs for n in per_model[model] if (model, st, n) not in done]
        if todo and not measure:
            missing = ", ".join(f"{name} over {STAGE_NAMES[stage]}" for stage, name in todo)
            skipped.append(f"{model}: not measured: {missing}.")
            todo = []
        lm, tokenizer = load_causal_lm(model, attn_implementation="sdpa") if todo else (None, None)
        for stage, hits in runs.items():
            for name in per_model[model]:
                if (model, stage, name) in done:
                    measured.append(done[model, stage, name])
                    continue
                if not measure:
                    continue
                cls, config_cls = lookup("reranker", name)
                options = {"model": model, "passage_tokens": passage_tokens}
                if name in ("listwise", "first"):
                    options |= {"window": window, "stride": stride}
                if name == "icr":  # every candidate in one prompt, whose limit grows to hold them
                    room = depth * (passage_tokens + 8) + 256
                    options |= {"docs_per_prompt": depth, "max_prompt_tokens": max(4096, room)}
                reranker = cls(config_cls(**options), model=lm, tokenizer=tokenizer, docstore=docstore)
                start = time.perf_counter()
                if progress:
                    print(f"{model}, {stage} top-{depth}: {name}", flush=True)
                reranked = rerank_run(reranker, hits, chosen, depth=depth, progress=progress)
                ms = 1000 * (time.perf_counter() - start) / len(chosen)
                after = score_run(reranked, judged, [MEASURE])[MEASURE]
                passes = reranker.forward_passes / len(chosen)
                change = paired_change(before_per_query[stage], per_query(reranked, judged, MEASURE))
                measured.append(Measured(model, stage, name, before[stage], after, ms, passes, change))
                if saved is not None:
                    _save(saved, measured[-1], len(chosen), depth)
        del lm, tokenizer
        gc.collect()

    stage_names = " and ".join(STAGE_NAMES[stage] for stage in runs)
    return SuiteResult(
        suite="rerank",
        title=f"LLM rerankers on SciFact: the top {depth} of {stage_names} reranked",
        baseline="the listwise (RankGPT-style generating) reranker, same model, first stage, queries, "
        "windows and passages; the table below gives every figure",
        rows=_speed_rows(measured, depth),
        notes=[
            f"The first {len(chosen)} of {len(qrels)} SciFact test queries (LLM reranking on a CPU is slow); "
            "the change column is the mean per-query change of nDCG@10 with its 95% bootstrap interval "
            "(scipy BCa, paired by query): an interval that holds 0 is no measured change.",
            f"Passages cut to {passage_tokens} tokens; listwise and FIRST use window {window}, stride "
            f"{stride}; ICR puts all {depth} candidates in one prompt (two passes); pointwise judges "
            "each candidate alone, 8 to a (left-padded) pass. A forward pass is one model call: listwise "
            "makes one per generated token.",
            f"torch threads {torch.get_num_threads()}; 1-minute load average at the start: {load:.1f} "
            "(ratios within this run are comparable, absolute times less so).",
            "Zero-shot, untrained prompts on small instruct models: the reranked nDCG@10 shows what each "
            "method gets out of these models, not what the methods reach with trained or larger models.",
            *skipped,
        ],
        appendix=_table(measured),
    )


def _load_saved(saved: str | Path | None, queries: int, depth: int) -> dict[tuple[str, str, str], Measured]:
    """What an earlier run with the same number of queries and depth kept in ``saved``."""
    if saved is None or not Path(saved).is_file():
        return {}
    done = {}
    for line in Path(saved).read_text().splitlines():
        fields = json.loads(line)
        if (fields.pop("queries"), fields.pop("depth")) == (queries, depth):
            m = Measured(**{**fields, "change": Change(**fields["change"])})
            done[m.model, m.stage, m.reranker] = m
    return done


def _save(saved: str | Path, measured: Measured, queries: int, depth: int) -> None:
    with open(saved, "a") as f:
        f.write(json.dumps({**asdict(measured), "queries": queries, "depth": depth}) + "\n")


def _speed_rows(measured: Sequence[Measured], depth: int) -> list[Row]:
    listwise = {(m.model, m.stage): m for m in measured if m.reranker == "listwise"}
    rows = []
    for m in measured:
        base = listwise.get((m.model, m.stage))
        if base is None or m.reranker == "listwise":
            continue
        label = f"{m.model}, {m.stage} top-{depth}: {m.reranker} ms/query (vs listwise)"
        rows.append(Row(label, m.ms, base.ms, "ms", TARGETS.get(m.reranker, "")))
    return rows


def _table(measured: Sequence[Measured]) -> str:
    lines = [
        "| model | first stage | reranker | nDCG@10 before | nDCG@10 after | change [95% CI] | ms/query "
        "| passes/query |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for m in measured:
        lines.append(
            f"| {m.model} | {m.stage} | {m.reranker} | {100 * m.before:.1f} | {100 * m.after:.1f} "
            f"| {m.change} | {m.ms:,.0f} | {m.passes:.1f} |"
        )
    return "\n".join(lines)
