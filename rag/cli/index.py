"""``rag index build`` and ``rag index info``."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from typing import Any

from rag.collection import build_index
from rag.corpus import FORMATS
from rag.errors import ConfigError
from rag.indexes import Manifest


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("index", help="build and inspect indexes")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    build = verbs.add_parser("build", help="index a corpus into a collection folder")
    build.add_argument("corpus", help="BEIR folder, .jsonl file, SQuAD .json file or folder of text files")
    build.add_argument("collection", help="collection folder (holds docstore.sqlite and the indexes)")
    build.add_argument("--name", default="dense", help="index folder name inside the collection")
    build.add_argument("--kind", default="dense", help="retriever kind (default: dense)")
    build.add_argument("--format", choices=sorted(FORMATS), help="corpus format (default: detected)")
    add_retriever_options(build)
    build.add_argument("--chunk-tokens", type=int, default=256, help="words per chunk of a text file")
    build.add_argument("--chunk-overlap", type=int, default=32, help="words shared by neighbouring chunks")
    build.set_defaults(handler=run_build)

    info = verbs.add_parser("info", help="print an index's manifest")
    info.add_argument("index", help="index folder")
    info.set_defaults(handler=run_info)


def add_retriever_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--encoder", help="dense encoder: bundled name, folder or hub id (default minilm)")
    parser.add_argument("--factory", help='dense faiss factory string, e.g. "Flat" (default), "HNSW32"')
    parser.add_argument("--batch-size", type=int, help="encoding batch size")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when present)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any option of the retriever's config (value read as JSON when it parses), e.g. --set k1=0.9",
    )


def retriever_config(args: argparse.Namespace) -> dict[str, Any]:
    """The options given on the command line; the retriever's config supplies the rest."""
    config: dict[str, Any] = {
        key: value
        for key, value in (
            ("encoder", args.encoder),
            ("factory", args.factory),
            ("batch_size", args.batch_size),
            ("device", args.device),
        )
        if value is not None
    }
    for item in args.set:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set takes KEY=VALUE, got {item!r}")
        try:
            config[key] = json.loads(raw)
        except json.JSONDecodeError:
            config[key] = raw
    return config


def run_build(args: argparse.Namespace) -> int:
    retriever = build_index(
        args.corpus,
        args.collection,
        name=args.name,
        kind=args.kind,
        config=retriever_config(args),
        fmt=args.format,
        chunk_tokens=args.chunk_tokens,
        chunk_overlap=args.chunk_overlap,
    )
    print(f"indexed {len(retriever)} documents into {args.collection}/{args.name}")
    return 0


def run_info(args: argparse.Namespace) -> int:
    print(json.dumps(asdict(Manifest.read(args.index)), indent=2, sort_keys=True))
    return 0
