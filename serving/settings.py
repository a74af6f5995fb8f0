"""Server settings: one frozen dataclass, merged from a JSON file, ``RAG_*`` environment variables and flags.

Later sources win: defaults < config file < environment < explicit overrides (the ``rag serve`` flags).

    >>> s = ServeSettings.load(env={"RAG_COLLECTIONS": "docs=/srv/docs/dense", "RAG_MAX_K": "20"})
    >>> s.collections, s.max_k
    ({'docs': '/srv/docs/dense'}, 20)

Environment variables are the field names in upper case with a ``RAG_`` prefix; ``RAG_COLLECTIONS`` is
``name=index_dir`` pairs separated by commas, and ``RAG_GENERATOR=none`` serves search only.
``RAG_RERANKER=pointwise`` gives ``POST /v1/rerank`` a default reranker (by default requests must name one).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rag.errors import ConfigError
from rag.generation.openai_compatible import REMOTE_GENERATOR
from rag.limits import MAX_QUERY_CHARS
from rag.models import DEFAULT_GENERATOR
from rag.registry import make_config

ENV_PREFIX = "RAG_"


@dataclass(frozen=True)
class ServeSettings:
    """Everything ``create_app`` needs; every limit is enforced per request with a 4xx and a message."""

    collections: dict[str, str] = field(default_factory=dict)  # name -> index directory
    generator: str | None = DEFAULT_GENERATOR  # bundled name, folder or hub id; None: search only
    # with generator "openai-compatible": the server that answers (e.g. http://127.0.0.1:8080/v1; key from
    # OPENAI_API_KEY) and its model id (None: the first it lists)
    base_url: str | None = None
    remote_model: str | None = None
    device: str | None = None  # generator device; None: the loader's choice
    threads: int | None = None  # torch intra-op threads; None leaves torch's setting alone
    api_token: str | None = None  # bearer token; None: reads need none, writes are closed unless open_writes
    open_writes: bool = False  # without a token: let anyone add and delete documents (say so explicitly)
    public_reads: bool = False  # with a token: let search/answer/list through without it (writes never)
    reranker: str | None = None  # default of POST /v1/rerank (listwise, first, icr, pointwise); None: none
    reranker_model: str | None = None  # causal LM of the rerankers; None: the generator's, shared
    default_k: int = 5  # passages given to the generator when a request names none
    max_body_bytes: int = 1_000_000
    max_query_chars: int = MAX_QUERY_CHARS
    max_k: int = 100  # hits per search
    max_passages: int = 20  # passages per answer
    max_rerank: int = 50  # candidates per rerank request (fetch_k, or documents given)
    max_tokens: int = 512  # the largest max_tokens a request may ask for
    default_max_tokens: int = 128
    request_timeout_s: float = 120.0  # generation stops and the request fails with 504 after this
    model_concurrency: int = 1  # generations running at once
    queue_size: int = 8  # generations waiting for a slot; beyond that: 503 + Retry-After
    retry_after_s: int = 2
    host: str = "127.0.0.1"
    port: int = 8000

    def __post_init__(self) -> None:
        positive = [
            "default_k",
            "max_body_bytes",
            "max_query_chars",
            "max_k",
            "max_passages",
            "max_rerank",
            "max_tokens",
            "default_max_tokens",
            "model_concurrency",
            "retry_after_s",
        ]
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"setting {name} must be at least 1, got {getattr(self, name)}")
        if self.queue_size < 0:
            raise ConfigError(f"setting queue_size must be >= 0, got {self.queue_size}")
        if self.request_timeout_s <= 0:
            raise ConfigError(f"setting request_timeout_s must be positive, got {self.request_timeout_s}")
        if self.default_k > self.max_passages:
            raise ConfigError(f"default_k={self.default_k} is above max_passages={self.max_passages}")
        if self.default_max_tokens > self.max_tokens:
            raise ConfigError(
                f"default_max_tokens={self.default_max_tokens} is above max_tokens={self.max_tokens}"
            )
        remote = self.generator == REMOTE_GENERATOR
        if remote != (self.base_url is not None):
            raise ConfigError(
                f"base_url goes with generator {REMOTE_GENERATOR!r}, and that generator needs it"
            )
        if self.remote_model is not None and not remote:
            raise ConfigError(f"remote_model goes with generator {REMOTE_GENERATOR!r}")
        if self.reranker and not (self.reranker_model or (self.generator and not remote)):
            raise ConfigError(
                f"reranker {self.reranker!r} needs a model: serve a local generator or name a reranker_model"
            )
        for name in self.collections:
            if not name or "/" in name:
                raise ConfigError(f"bad collection name {name!r}: it must be non-empty and contain no '/'")

    @classmethod
    def load(
        cls,
        config_file: str | Path | None = None,
        *,
        env: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> ServeSettings:
        """Merge the file, the environment (``os.environ`` by default) and non-None ``overrides``."""
        values: dict[str, Any] = {}
        if config_file is not None:
            values.update(_read_file(Path(config_file)))
        values.update(from_env(os.environ if env is None else env))
        values.update({k: v for k, v in overrides.items() if v is not None})
        return make_config(cls, values)


def from_env(env: Mapping[str, str]) -> dict[str, Any]:
    """The settings named by ``RAG_<FIELD>`` variables, converted to the field's type."""
    values: dict[str, Any] = {}
    for f in dataclasses.fields(ServeSettings):
        raw = env.get(ENV_PREFIX + f.name.upper())
        if raw is not None:
            values[f.name] = _convert(f.name, str(f.type), raw)
    return values


def parse_collections(pairs: str) -> dict[str, str]:
    """``"a=/x/dense,b=/y/dense"`` -> ``{"a": "/x/dense", "b": "/y/dense"}``."""
    out: dict[str, str] = {}
    for pair in filter(None, (p.strip() for p in pairs.split(","))):
        name, sep, path = pair.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise ConfigError(f"collection {pair!r} is not NAME=INDEX_DIR")
        out[name.strip()] = path.strip()
    return out


def _convert(name: str, type_name: str, raw: str) -> Any:
    if name == "collections":
        return parse_collections(raw)
    if "None" in type_name and raw.strip().lower() in ("", "none"):
        return None
    try:
        if type_name.startswith("bool"):
            if raw.strip().lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError(raw)
            return raw.strip().lower() in ("1", "true", "yes")
        if type_name.startswith("int"):
            return int(raw)
        if type_name.startswith("float"):
            return float(raw)
    except ValueError:
        raise ConfigError(
            f"environment variable {ENV_PREFIX}{name.upper()}={raw!r} is not a {type_name}"
        ) from None
    return raw


def _read_file(path: Path) -> dict[str, Any]:
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"serve config not found: {path}") from None
    except json.JSONDecodeError as error:
        raise ConfigError(f"invalid JSON in serve config {path}: {error}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"serve config {path} must be a JSON object")
    collections = raw.get("collections", {})
    if not isinstance(collections, dict):
        raise ConfigError(f"serve config {path}: 'collections' must be an object of name -> index directory")
    # index directories in the file are relative to the file
    raw["collections"] = {n: str((path.resolve().parent / d).resolve()) for n, d in collections.items()}
    return raw
