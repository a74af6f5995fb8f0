"""``rag rerank INDEX QUERY --reranker NAME``: retrieve, rerank with an LLM, print the new order."""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from typing import Any

from rag.collection import Collection
from rag.errors import ConfigError
from rag.indexes.base import check_queries
from rag.registry import build, names


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("rerank", help="retrieve and rerank with an LLM reranker")
    parser.add_argument("index", help="index folder (COLLECTION/NAME)")
    parser.add_argument("query")
    parser.add_argument(
        "--reranker",
        required=True,
        help="listwise, first, icr or pointwise; or listwise-remote / first-remote over an OpenAI-compatible "
        """server: --set server='{"base_url": "http://127.0.0.1:8080/v1"}'""",
    )
    parser.add_argument("--model", help="causal LM: bundled name, folder or hub id (default: the reranker's)")
    parser.add_argument("-k", type=int, default=10, help="hits shown after reranking (default 10)")
    parser.add_argument("--fetch-k", type=int, default=20, help="hits retrieved and reranked (default 20)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any option of the reranker's config (value read as JSON when it parses), e.g. --set window=10",
    )
    parser.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    parser.set_defaults(handler=run)


def reranker_options(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {"model": args.model} if args.model else {}
    for item in args.set:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set takes KEY=VALUE, got {item!r}")
        try:
            options[key] = json.loads(raw)
        except json.JSONDecodeError:
            options[key] = raw
    return options


def run(args: argparse.Namespace) -> int:
    check_queries([args.query], args.k)  # before loading anything
    if args.fetch_k < args.k:
        raise ConfigError(f"--fetch-k ({args.fetch_k}) must be at least -k ({args.k})")
    if args.reranker not in names("reranker"):
        raise ConfigError(f"unknown reranker {args.reranker!r}; known: {', '.join(names('reranker'))}")
    collection = Collection(args.index)  # ConfigError when the index records no docstore to read from
    reranker = build("reranker", args.reranker, reranker_options(args))
    reranker.docstore = collection.docstore
    hits, _ = collection.search(args.query, k=args.fetch_k)
    start = time.perf_counter()
    reranked = reranker.rerank(args.query, hits, k=args.k)
    seconds = time.perf_counter() - start
    before = {h.doc_id: h.rank for h in hits}
    docs = collection.docstore.get([h.doc_id for h in reranked])
    if args.json:
        for hit, doc in zip(reranked, docs, strict=True):
            print(
                json.dumps(
                    {
                        "query": args.query,
                        **asdict(hit),
                        "retriever_rank": before[hit.doc_id],
                        "title": doc.title,
                    }
                )
            )
        return 0
    print(f"# {args.query}  ({args.reranker}: {len(hits)} hits in {seconds:.1f} s)")
    for hit, doc in zip(reranked, docs, strict=True):
        title = doc.title or doc.text[:60]
        print(f"{hit.rank:>3}  (was {before[hit.doc_id]:>3})  {hit.score:9.4f}  {hit.doc_id}  {title}")
    return 0
