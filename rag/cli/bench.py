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
    parser.add_argument(
        "--models", help="generate: the causal LMs to measure, comma-separated (default: both Qwen2.5-Coder)"
    )
    parser.add_argument("--short", type=int, help="generate: short-answer XQuAD prompts (default 10)")
    parser.add_argument("--long", type=int, help="generate: long-answer XQuAD prompts (default 3)")
    parser.set_defaults(handler=run)


def _generate_options(args: argparse.Namespace) -> dict[str, Any]:
    """The generate suite's options given on the command line; refused for a run without that suite."""
    options: dict[str, Any] = {}
    if args.models:
        options["models"] = tuple(name.strip() for name in args.models.split(",") if name.strip())
    for name in ("short", "long"):
        value = getattr(args, name)
        if value is not None:
            if value < 0:
                raise ConfigError(f"--{name} must be >= 0, got {value}")
            options[name] = value
    if options and "generate" not in (args.suites or ["generate"]):
        raise ConfigError("--models, --short and --long are options of the generate suite")
    return options


def run(args: argparse.Namespace) -> int:
    unknown = sorted(set(args.suites) - set(SUITES))
    if unknown:
        raise ConfigError(f"unknown bench suite(s) {unknown}; known: {', '.join(sorted(SUITES))}")
    generate = _generate_options(args)
    for name in args.suites or sorted(SUITES):
        result = SUITES[name]()(**(generate if name == "generate" else {}))
        print(result.markdown())
        write_section(args.output, result)
    print(f"wrote {args.output}")
    return 0
