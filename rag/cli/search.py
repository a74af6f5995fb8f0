"""``rag search INDEX QUERY...``: print the top hits of each query with their titles."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from typing import Any

from rag.collection import Collection
from rag.indexes import Manifest, load_index
from rag.indexes.base import check_queries
from rag.limits import check_length


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("search", help="search an index")
    parser.add_argument("index", help="index folder (COLLECTION/NAME)")
    parser.add_argument("queries", nargs="+", metavar="QUERY")
    parser.add_argument("-k", type=int, default=10, help="hits per query (default 10)")
    parser.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    check_queries(args.queries, args.k)  # before loading anything
    for query in args.queries:
        check_length(query, "query")
    if Manifest.read(args.index).docstore:
        with Collection(args.index) as collection:  # one consistent state, beside other processes' writers
            results = collection.search_many(args.queries, k=args.k)
    else:  # an index saved on its own: ids and scores only
        hits_per_query = load_index(args.index).search(args.queries, k=args.k)
        results = [(hits, [None] * len(hits)) for hits in hits_per_query]
    for query, (hits, docs) in zip(args.queries, results, strict=True):
        if args.json:
            for hit, doc in zip(hits, docs, strict=True):
                print(json.dumps({"query": query, **asdict(hit), "title": doc.title if doc else ""}))
            continue
        print(f"# {query}")
        for hit, doc in zip(hits, docs, strict=True):
            title = (doc.title or doc.text[:60]) if doc else ""
            print(f"{hit.rank:>3}  {hit.score:8.4f}  {hit.doc_id}  {title}")
    return 0
