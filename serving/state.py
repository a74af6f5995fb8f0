"""What the lifespan loads once and every request shares: collections, the generator (whose causal LM the
rerankers share unless ``reranker_model`` names another), the model gate, metrics.

>>> settings = ServeSettings(collections={"docs": "docs/dense"}, generator=None)  # doctest: +SKIP
>>> state = ServerState.load(settings)                                           # doctest: +SKIP
>>> hits, docs = state.collections["docs"].search("what is ragloom?", k=3)       # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rag.collection import Collection
from rag.errors import ConfigError, IndexFormatError
from rag.generation.base import Generator
from rag.generation.openai_compatible import REMOTE_GENERATOR
from rag.pipeline import Pipeline
from rag.registry import lookup, make_config, names
from rag.rerankers.base import Reranker
from rag.rerankers.lm import LMReranker, MemoryDocs
from rag.serving.gate import ModelGate
from rag.serving.metrics import Metrics
from rag.serving.settings import ServeSettings
from rag.types import Document

log = logging.getLogger(__name__)


class ServedCollection(Collection):
    """A served :class:`~rag.collection.Collection` under its ``name``, with the pipeline answering from it.

    Searches and updates of one collection run one at a time in this process; the writer lock of the
    collection folder serialises updates across processes, and searches follow other processes' commits.
    The REST routes and LangChain's Runnable answer through ``pipeline``; /v1/search and /v1/rerank search.
    """

    def __init__(self, name: str, index_dir: str | Path, generator: Generator | None, k: int) -> None:
        super().__init__(index_dir)
        self.name = name
        self.pipeline = Pipeline(self, generator, k=k) if generator else None


@dataclass
class ServerState:
    settings: ServeSettings
    collections: dict[str, ServedCollection]
    generator: Generator | None
    gate: ModelGate
    metrics: Metrics = field(default_factory=Metrics)
    reranker_lm: tuple[Any, Any] | None = None  # (model, tokenizer) of the rerankers; None: cannot rerank
    unavailable: dict[str, str] = field(default_factory=dict)  # collection -> why it cannot be served (503)

    @classmethod
    def load(cls, settings: ServeSettings, metrics: Metrics | None = None) -> ServerState:
        if settings.reranker is not None:
            check_reranker(settings.reranker)  # an unknown default reranker fails at start-up
        generator = _generator(settings)
        reranker_lm = _reranker_lm(settings, generator)
        collections: dict[str, ServedCollection] = {}
        unavailable: dict[str, str] = {}
        try:
            for name, index_dir in settings.collections.items():
                try:
                    collections[name] = ServedCollection(name, index_dir, generator, settings.default_k)
                except IndexFormatError as error:  # damaged or missing: served as an error, the rest served
                    log.error("collection %r is unavailable: %s", name, error)
                    unavailable[name] = str(error)
        except BaseException:
            for collection in collections.values():
                collection.close()
            raise
        gate = ModelGate(settings.model_concurrency, settings.queue_size)
        return cls(settings, collections, generator, gate, metrics or Metrics(), reranker_lm, unavailable)

    @property
    def chat_model(self) -> str | None:
        """The name under which the generator answers plain chats (``/v1/chat/completions``), if served."""
        return self.settings.generator if self.generator is not None else None

    @property
    def reranker_model(self) -> str | None:
        """The name of the causal LM the rerankers run on (None when the server has none)."""
        return (self.settings.reranker_model or self.settings.generator) if self.reranker_lm else None

    def reranker(self, name: str, docs: Sequence[Document]) -> Reranker:
        """A fresh reranker ``name`` on the shared causal LM, reading ``docs`` (cheap: nothing is loaded).

        One instance per request, so that concurrent requests never share its document source.
        """
        if self.reranker_lm is None:
            raise ConfigError("this server has no model to rerank with")
        check_reranker(name)
        cls, config_cls = lookup("reranker", name)
        options = {
            "model": self.reranker_model,
            "device": self.settings.device,
            "threads": self.settings.threads,
        }
        model, tokenizer = self.reranker_lm
        return cls(
            make_config(config_cls, options), model=model, tokenizer=tokenizer, docstore=MemoryDocs(docs)
        )

    def close(self) -> None:
        for collection in self.collections.values():
            collection.close()


def local_rerankers() -> list[str]:
    """The rerankers that run on the server's own causal LM (not those that call a remote server)."""
    return [n for n in names("reranker") if issubclass(lookup("reranker", n)[0], LMReranker)]


def check_reranker(name: str) -> None:
    """ConfigError unless ``name`` is a reranker that runs on the server's own causal LM."""
    local = local_rerankers()
    if name in local:
        return
    if name in names("reranker"):
        raise ConfigError(f"reranker {name!r} does not run on the server's model; known: {', '.join(local)}")
    raise ConfigError(f"unknown reranker {name!r}; known: {', '.join(local)}")


def _generator(settings: ServeSettings) -> Generator | None:
    """The served generator: a local causal LM, or a remote OpenAI-compatible server; None: search only."""
    from rag.registry import build

    if not settings.generator:
        return None
    if settings.generator == REMOTE_GENERATOR:
        return build(
            "generator", REMOTE_GENERATOR, {"base_url": settings.base_url, "model": settings.remote_model}
        )
    config = {"model": settings.generator, "device": settings.device, "threads": settings.threads}
    return build("generator", "causal-lm", config)


def _reranker_lm(settings: ServeSettings, generator: Generator | None) -> tuple[Any, Any] | None:
    """The generator's model and tokenizer when the rerankers use the same model, else a second one loaded."""
    local_generator = settings.generator if settings.generator != REMOTE_GENERATOR else None
    name = settings.reranker_model or local_generator
    if not name:
        return None
    model, tokenizer = getattr(generator, "model", None), getattr(generator, "tokenizer", None)
    if name == settings.generator and model is not None and tokenizer is not None:
        return model, tokenizer
    from rag.lm import load_causal_lm

    return load_causal_lm(name, device=settings.device)
