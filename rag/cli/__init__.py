"""The ``rag`` command: one parser, one subcommand module per verb, ``main(argv) -> int``.

Exit codes:
    0  success
    1  unexpected internal error (a bug: the traceback is printed)
    2  bad usage or configuration (unknown option, unknown component, empty query)
    3  bad corpus input (missing file, malformed record, duplicate id)
    4  missing, corrupt or mismatched index; a collection another process kept locked or changed
    5  model unknown, not installed, or failing its checksum
    130 interrupted
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from rag.cli import ask, bench, evaluate, index, models, rerank, search, serve
from rag.errors import RagError

_COMMANDS = (index, search, ask, models, evaluate, bench, serve, rerank)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rag",
        description="ragloom: retrieval-augmented generation that runs offline.",
        epilog="exit codes: 0 ok, 1 internal error, 2 usage, 3 corpus, 4 index, 5 model, 130 interrupted",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more detail")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in _COMMANDS:
        module.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    if not args.verbose:
        _quiet_model_loading()
    try:
        return int(args.handler(args) or 0)
    except RagError as error:
        print(f"rag: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("rag: interrupted", file=sys.stderr)
        return 130


def _quiet_model_loading() -> None:
    """Hide transformers' per-load progress bars; ragloom shows its own bars for long work."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def entrypoint() -> None:
    sys.exit(main())
