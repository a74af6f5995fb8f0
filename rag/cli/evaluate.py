"""``rag eval retrieval`` (BEIR folder, ir-measures) and ``rag eval qa`` (SQuAD file, EM/F1)."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from rag.cli.generation_options import add_generation_options, generation_params, generator_config
from rag.cli.index import add_retriever_options, retriever_config
from rag.collection import build_index
from rag.corpus import read_beir
from rag.eval.qa import QA_SYSTEM_PROMPT, evaluate_qa
from rag.eval.retrieval import DEFAULT_MEASURES, evaluate_retrieval
from rag.indexes import Retriever, load_index
from rag.pipeline import Pipeline
from rag.registry import build


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
    retrieval.add_argument("--run", help="write the run to this TREC run file")
    retrieval.set_defaults(handler=run_retrieval)

    qa = verbs.add_parser("qa", help="exact match and F1 on a SQuAD-format file, with the pipeline")
    qa.add_argument("squad", help="SQuAD v1.1 JSON file (its paragraphs are the corpus)")
    qa.add_argument("--index", help="a built index of the paragraphs (default: build one in a temp folder)")
    qa.add_argument("--limit", type=int, default=100, help="first N questions (default 100; 0 = all)")
    add_generation_options(qa, max_new_tokens=32)
    qa.set_defaults(handler=run_qa)


def run_retrieval(args: argparse.Namespace) -> int:
    retriever: Retriever
    if args.index:
        retriever = load_index(args.index)
    else:
        retriever = build("retriever", args.kind, retriever_config(args))
        retriever.add(read_beir(args.beir))
    report = evaluate_retrieval(
        retriever, args.beir, split=args.split, k=args.depth, measures=args.measures, run_path=args.run
    )
    for name, value in report.metrics.items():
        print(f"{name:<10} {value:.4f}")
    print(f"queries    {report.queries}  ({report.ms_per_query:.1f} ms/query)")
    return 0


def run_qa(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="rag-eval-qa-") as tmp:
        index = args.index
        if index is None:
            build_index(args.squad, tmp, name="dense", fmt="squad")
            index = str(Path(tmp, "dense"))
        generator = build("generator", "causal-lm", generator_config(args, system_prompt=QA_SYSTEM_PROMPT))
        pipeline = Pipeline(load_index(index), generator, k=args.k)
        report = evaluate_qa(pipeline, args.squad, limit=args.limit or None, params=generation_params(args))
    print(f"questions        {len(report.records)}")
    print(f"exact match      {report.em:.1f}")
    print(f"F1               {report.f1:.1f}")
    print(f"gold in top-{args.k}    {report.gold_in_passages:.1f}%")
    print(f"median seconds   {report.median_seconds:.2f}")
    return 0
