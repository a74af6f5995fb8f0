"""``rag bench [SUITE...]``: run benchmark suites and write their tables to docs/benchmarks.md."""

from __future__ import annotations

import argparse
from typing import Any

from rag.bench import SUITES
from rag.bench.report import write_section
from rag.errors import ConfigError


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("bench", help="measure ragloom against baselines, side by side")
    parser.add_argument(
        "suites",
        nargs="*",
        metavar="SUITE",
        help=f"suites to run (default: all): {', '.join(sorted(SUITES))}",
    )
    parser.add_argument("--output", default="docs/benchmarks.md", help="Markdown file to update")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    unknown = sorted(set(args.suites) - set(SUITES))
    if unknown:
        raise ConfigError(f"unknown bench suite(s) {unknown}; known: {', '.join(sorted(SUITES))}")
    for name in args.suites or sorted(SUITES):
        result = SUITES[name]()()
        print(result.markdown())
        write_section(args.output, result)
    print(f"wrote {args.output}")
    return 0
