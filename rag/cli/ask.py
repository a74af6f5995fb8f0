"""``rag ask QUESTION``: retrieve, generate, print the cited answer, its sources and timings."""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

from rag.cli.generation_options import add_generation_options, build_generator, generation_params
from rag.collection import Collection
from rag.errors import ConfigError
from rag.limits import check_length
from rag.pipeline import Pipeline
from rag.types import Answer


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("ask", help="answer a question from an index, with citations")
    parser.add_argument("question")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--index", help="index folder (COLLECTION/NAME)")
    source.add_argument("--config", help="saved pipeline configuration (JSON)")
    add_generation_options(parser)
    parser.add_argument("--stream", action="store_true", help="print tokens as they are generated")
    parser.set_defaults(handler=run)


def make_pipeline(args: argparse.Namespace) -> Pipeline:
    if args.config:
        return Pipeline.from_config(args.config)
    return Pipeline(Collection(args.index), build_generator(args), k=args.k)


def run(args: argparse.Namespace) -> int:
    if not args.question.strip():
        raise ConfigError("the question is empty")
    check_length(args.question, "question")  # the server's limit (rag.limits)
    params = generation_params(args)  # bad parameters fail before any model loads
    pipeline = make_pipeline(args)
    if args.config:  # the options given override the config's generator defaults, the others keep them
        params = generation_params(args, pipeline.generator.default_params())
    if args.stream:
        stream = pipeline.stream(args.question, params)
        for piece in stream:
            print(piece, end="", flush=True)
        print()
        print_sources(stream.answer)
        return 0
    print_answer(pipeline.answer(args.question, params))
    return 0


def print_answer(answer: Answer, out: TextIO | None = None) -> None:
    """The answer's text, then its sources (cited ones marked ``*``), citations and timings."""
    print(answer.text, file=out or sys.stdout)
    print_sources(answer, out)


def print_sources(answer: Answer, out: TextIO | None = None) -> None:
    """What follows the answer's text, streamed or not: sources, citations and timings."""
    out = out or sys.stdout
    t = answer.timings
    print("\nSources:", file=out)
    for number, passage in enumerate(answer.passages, start=1):
        mark = "*" if passage.id in answer.citations else " "
        print(f" {mark}[{number}] {passage.id}  {passage.title or passage.text[:60]}", file=out)
    cited = ", ".join(answer.citations) if answer.citations else "none"
    print(f"\nCited: {cited}", file=out)
    rerank = f"rerank {t.rerank_s:.2f} s, " if t.rerank_s else ""
    print(
        f"Timings: retrieve {t.retrieve_s:.2f} s, {rerank}time to first token {t.prefill_s:.2f} s, "
        f"decode {t.new_tokens} tokens in {t.decode_s:.2f} s ({t.decode_tokens_per_s:.1f} tok/s), "
        f"total {t.total_s:.2f} s",
        file=out,
    )
