"""``rag serve``: the REST API (FastAPI on uvicorn) over one or more collections.

    rag serve --collection docs=my-collection/dense --generator smollm2-135m-instruct --port 8000

Settings come from ``--config FILE`` (JSON), then ``RAG_*`` environment variables, then these flags.
SIGINT/SIGTERM stop accepting connections and let in-flight requests finish (up to the request timeout).
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import TYPE_CHECKING, Any

from rag.errors import ConfigError

if TYPE_CHECKING:
    from rag.serving.settings import ServeSettings


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("serve", help="serve search, answers and an OpenAI-compatible API over HTTP")
    parser.add_argument(
        "--collection",
        action="append",
        metavar="NAME=INDEX_DIR",
        help="a collection to serve (repeatable); adds to those of the config file and RAG_COLLECTIONS",
    )
    parser.add_argument("--config", help="JSON file of settings (see docs/serving.md)")
    parser.add_argument("--host", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default 8000)")
    parser.add_argument(
        "--generator",
        help="LLM: bundled name, folder or hub id; openai-compatible with --base-url (a remote server, key "
        "from OPENAI_API_KEY); 'none' serves search only",
    )
    parser.add_argument(
        "--base-url", help="with --generator openai-compatible: e.g. http://127.0.0.1:8080/v1"
    )
    parser.add_argument("--remote-model", help="with --generator openai-compatible: the server's model id")
    parser.add_argument(
        "--reranker", help="default reranker of /v1/rerank: listwise, first, icr or pointwise (default: none)"
    )
    parser.add_argument(
        "--reranker-model", help="causal LM of the rerankers (default: the generator's, shared with it)"
    )
    parser.add_argument("--device", help="generator device: cpu or cuda")
    parser.add_argument("--threads", type=int, help="torch threads for the generator")
    parser.add_argument(
        "--token", dest="api_token", help="bearer token required by the API (or RAG_API_TOKEN)"
    )
    parser.add_argument(
        "--open-writes",
        action="store_true",
        default=None,
        help="without --token: let anyone add and delete documents (by default writes need a token)",
    )
    parser.add_argument("--queue-size", type=int, help="generations allowed to wait for the model")
    parser.add_argument("--request-timeout", dest="request_timeout_s", type=float, help="seconds")
    parser.add_argument(
        "--ray",
        metavar="ADDRESS",
        help="serve replicas on a Ray cluster (Ray Serve): 'auto', HOST:PORT or ray://HOST:PORT; the index "
        "folders must be at the same paths on every node",
    )
    parser.add_argument("--replicas", type=int, help="with --ray: replicas of the app (default 2)")
    parser.add_argument(
        "--replica-cpus", type=float, help="with --ray: CPUs Ray reserves per replica (default 1)"
    )
    parser.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )
    parser.set_defaults(handler=run)


def settings_from_args(args: argparse.Namespace) -> ServeSettings:
    """The config file and ``RAG_*`` variables, overridden by the flags that were given."""
    from rag.serving.settings import ServeSettings, parse_collections

    base = ServeSettings.load(args.config)
    collections = dict(base.collections)
    for pair in args.collection or ():
        collections.update(parse_collections(pair))
    if not collections:
        raise ConfigError("no collection to serve: pass --collection NAME=INDEX_DIR (or set RAG_COLLECTIONS)")
    flags = {
        "host": args.host,
        "port": args.port,
        "generator": args.generator,
        "base_url": args.base_url,
        "remote_model": args.remote_model,
        "reranker": args.reranker,
        "reranker_model": args.reranker_model,
        "device": args.device,
        "threads": args.threads,
        "api_token": args.api_token,
        "open_writes": args.open_writes,
        "queue_size": args.queue_size,
        "request_timeout_s": args.request_timeout_s,
    }
    overrides: dict[str, Any] = {k: v for k, v in flags.items() if v is not None}
    for name in ("generator", "reranker"):
        if (getattr(args, name) or "").lower() == "none":
            overrides[name] = None
    return dataclasses.replace(base, collections=collections, **overrides)


def writes_policy(settings: ServeSettings) -> str:
    """How adds and deletes are allowed, as said at start-up."""
    if settings.api_token is not None:
        return "allowed with the token"
    if settings.open_writes:
        return "OPEN: anyone who reaches this address may add and delete documents (--open-writes)"
    return "closed (403): no --token was given; pass --token T, or --open-writes to allow them to anyone"


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    if not args.ray and (args.replicas is not None or args.replica_cpus is not None):
        raise ConfigError("--replicas and --replica-cpus need --ray ADDRESS (replicas run on a Ray cluster)")
    if args.ray:
        from rag.serving.ray_replicas import serve_on_ray

        print(f"writes: {writes_policy(settings)}", flush=True)
        replicas, cpus = args.replicas or 2, args.replica_cpus or 1.0
        serve_on_ray(settings, address=args.ray, replicas=replicas, replica_cpus=cpus)
        return 0
    import uvicorn

    from rag.serving.app import create_app

    app = create_app(settings)
    print(
        f"serving {', '.join(settings.collections)} on http://{settings.host}:{settings.port} (docs at /docs)"
    )
    print(f"writes: {writes_policy(settings)}", flush=True)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=args.log_level,
        timeout_graceful_shutdown=int(settings.request_timeout_s) + 1,
    )
    return 0
