"""``rag eval retrieval`` (BEIR folder, ir-measures, optionally LLM-reranked); ``rag eval qa`` (SQuAD, EM/F1);
``rag eval citations`` (BEIR claims: are the cited passages judged relevant?).

rag eval retrieval data/scifact --index scifact/dense --reranker first --rerank-depth 20 --limit 50
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from rag.cli.generation_options import add_generation_options, build_generator, generation_params
from rag.cli.index import add_retriever_options, retriever_config
from rag.collection import Collection, build_index
from rag.corpus import read_beir
from rag.docstore import Docstore
from rag.errors import ConfigError
from rag.eval.citations import evaluate_citations
from rag.eval.qa import QA_REMINDER, QA_SYSTEM_PROMPT, evaluate_qa, write_predictions
from rag.eval.retrieval import DEFAULT_MEASURES, evaluate_retrieval
from rag.indexes import Retriever, load_index
from rag.pipeline import Pipeline
from rag.registry import build, lookup
from rag.rerankers.base import DocumentSource, Reranker
from rag.rerankers.lm import MemoryDocs
from rag.types import Document


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("eval", help="evaluate retrieval or question answering")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    retrieval = verbs.add_parser("retrieval", help="nDCG@10, Recall@100, MRR@10 on a BEIR folder")
    retrieval.add_argument("beir", help="BEIR folder (corpus.jsonl, queries.jsonl, qrels/)")
    retrieval.add_argument("--index", help="a built index of that corpus (default: build one in memory)")
    retrieval.add_argument("--kind", default="dense", help="retriever kind when building (default: dense)")
    add_retriever_options(retrieval)
    retrieval.add_argument("--split", default="test", help="qrels split (default: test)")
    retrieval.add_argument("--depth", type=int, default=100, help="hits per query (default 100)")
    retrieval.add_argument("--measures", nargs="+", default=list(DEFAULT_MEASURES))
    retrieval.add_argument("--run", help="write the run (reranked, with --reranker) to this TREC run file")
    retrieval.add_argument("--limit", type=int, default=0, help="first N judged queries (default 0 = all)")
    retrieval.add_argument(
        "--reranker",
        help="rerank each query's top hits with this LLM reranker: listwise, first, icr, pointwise",
    )
    retrieval.add_argument(
        "--rerank-depth", type=int, default=20, help="hits reranked per query (default 20; at most --depth)"
    )
    retrieval.add_argument("--reranker-model", help="causal LM of the reranker (default: the reranker's)")
    retrieval.set_defaults(handler=run_retrieval)

    qa = verbs.add_parser("qa", help="exact match and F1 on a SQuAD-format file, with the pipeline")
    qa.add_argument("squad", help="SQuAD v1.1 JSON file (its paragraphs are the corpus)")
    qa.add_argument("--index", help="a built index of the paragraphs (default: build one in a temp folder)")
    qa.add_argument("--limit", type=int, default=100, help="first N questions (default 100; 0 = all)")
    qa.add_argument(
        "--predictions",
        metavar="FILE",
        help="write one JSON line per question: prediction, gold answers, EM/F1, passages and cited ids",
    )
    qa.add_argument(
        "--gold-baseline",
        action="store_true",
        help="also answer each question from its gold paragraph alone (the same generator, twice the time)",
    )
    add_generation_options(qa, max_new_tokens=32)
    qa.set_defaults(handler=run_qa)

    citations = verbs.add_parser(
        "citations", help="how often answers cite a passage judged relevant, on a BEIR folder's claims"
    )
    citations.add_argument("beir", help="BEIR folder (corpus.jsonl, queries.jsonl, qrels/)")
    citations.add_argument("--index", required=True, help="a built index of that corpus, with its docstore")
    citations.add_argument("--split", default="test", help="qrels split (default: test)")
    citations.add_argument("--limit", type=int, default=50, help="first N queries (default 50; 0 = all)")
    add_generation_options(citations, max_new_tokens=64)
    citations.set_defaults(handler=run_citations)


def run_retrieval(args: argparse.Namespace) -> int:
    if args.reranker is not None:  # refuse a bad name or depth before building or loading anything
        lookup("reranker", args.reranker)
        if not 1 <= args.rerank_depth <= args.depth:
            raise ConfigError(
                f"--rerank-depth must be between 1 and --depth ({args.depth}), got {args.rerank_depth}"
            )
    if args.limit < 0:
        raise ConfigError(f"--limit must be 0 (all) or more, got {args.limit}")
    retriever: Retriever
    corpus: list[Document] | None = None
    if args.index:
        retriever = load_index(args.index)
    else:
        retriever = build("retriever", args.kind, retriever_config(args))
        corpus = list(read_beir(args.beir))
        retriever.add(corpus)
    reranker: Reranker | None = None
    docstore: DocumentSource | None = None
    if args.reranker is not None:
        reranker = build(
            "reranker", args.reranker, {"model": args.reranker_model} if args.reranker_model else {}
        )
        docstore = _docstore(retriever, args.beir, corpus)
    try:
        report = evaluate_retrieval(
            retriever,
            args.beir,
            split=args.split,
            k=args.depth,
            measures=args.measures,
            run_path=args.run,
            limit=args.limit or None,
            reranker=reranker,
            docstore=docstore,
            rerank_depth=args.rerank_depth,
        )
    finally:
        if isinstance(docstore, Docstore):
            docstore.close()
    before = report.retriever_metrics
    if before is not None:
        print(f"reranked   top {args.rerank_depth} of each query with {args.reranker}")
    for name, value in report.metrics.items():
        print(f"{name:<10} {value:.4f}" + (f"  (before reranking {before[name]:.4f})" if before else ""))
    timing = f"{report.ms_per_query:.1f} ms/query"
    if before is not None:
        timing = f"search {timing}, rerank {report.rerank_ms_per_query:.1f} ms/query"
    print(f"queries    {report.queries}  ({timing})")
    return 0


def _docstore(retriever: Retriever, beir: str, corpus: list[Document] | None) -> DocumentSource:
    """Where the reranker reads passages: the index's docstore, else the BEIR corpus held in memory."""
    path = retriever.docstore_path
    if path is not None:
        return Docstore(path)
    return MemoryDocs(corpus if corpus is not None else read_beir(beir))


def run_qa(args: argparse.Namespace) -> int:
    params = generation_params(args)  # bad parameters fail before indexing or loading a model
    if args.predictions and not Path(args.predictions).resolve().parent.is_dir():
        raise ConfigError(f"--predictions: the folder of {args.predictions} does not exist")
    with tempfile.TemporaryDirectory(prefix="rag-eval-qa-") as tmp:
        index = args.index
        if index is None:
            build_index(args.squad, tmp, name="dense", fmt="squad")
            index = str(Path(tmp, "dense"))
        generator = build_generator(args, system_prompt=QA_SYSTEM_PROMPT, reminder=QA_REMINDER)
        pipeline = Pipeline(Collection(index), generator, k=args.k)
        report = evaluate_qa(
            pipeline, args.squad, limit=args.limit or None, params=params, gold_baseline=args.gold_baseline
        )
    print(f"questions        {len(report.records)}")
    print(f"exact match      {report.em:.1f}")
    print(f"F1               {report.f1:.1f}")
    if report.gold_only_em is not None:
        print(f"gold passage only EM {report.gold_only_em:.1f}  F1 {report.gold_only_f1:.1f}")
    print(f"gold in top-{args.k}    {report.gold_in_passages:.1f}%")
    if report.gold_cited_when_right is not None:
        print(f"gold cited first {report.gold_cited_when_right:.1f}% of the exactly right answers")
    print(f"median seconds   {report.median_seconds:.2f}")
    if args.predictions:
        write_predictions(report.records, args.predictions)
        print(f"predictions      {args.predictions}")
    return 0


def run_citations(args: argparse.Namespace) -> int:
    params = generation_params(args)
    generator = build_generator(args)
    pipeline = Pipeline(Collection(args.index), generator, k=args.k)
    limit = args.limit or None
    report = evaluate_citations(pipeline, args.beir, split=args.split, limit=limit, params=params)
    first = report.first_citation_relevant
    print(f"queries                  {len(report.records)}")
    print(f"relevant in top-{args.k:<2}        {report.relevant_retrieved:.1f}%")
    print(f"answers citing a passage {report.cited_any:.1f}%")
    shown = "n/a" if first is None else f"{first:.1f}%"
    among = f"of {len(report.answerable)} answers citing, with a relevant passage given"
    print(f"first citation relevant  {shown} {among}")
    return 0
