"""Build components by name from frozen config dataclasses.

Every component class registers itself under a kind ("retriever", "reranker", "generator") and a name,
with the frozen dataclass that configures it::

    @register("retriever", "dense", DenseConfig)
    class DenseRetriever: ...

    retriever = build("retriever", "dense", {"encoder": "minilm"})
"""

from __future__ import annotations

import dataclasses
import importlib
import typing
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from rag.errors import ConfigError

T = TypeVar("T")

# kind -> name -> (class, config class)
_REGISTRY: dict[str, dict[str, tuple[type, type]]] = {}

# Modules that register components; imported on first lookup so that importing rag stays cheap.
_PROVIDERS = (
    "rag.indexes.dense",
    "rag.indexes.sharded_dense",
    "rag.indexes.bm25",
    "rag.indexes.hybrid",
    "rag.indexes.splade",
    "rag.indexes.pq",
    "rag.indexes.vector_prf",
    "rag.generation.causal_lm",
    "rag.generation.openai_compatible",
    "rag.rerankers.listwise",
    "rag.rerankers.first",
    "rag.rerankers.icr",
    "rag.rerankers.pointwise",
    "rag.rerankers.remote_first",
    "rag.rerankers.remote_listwise",
)


def register(kind: str, name: str, config_cls: type) -> Callable[[type[T]], type[T]]:
    def decorate(cls: type[T]) -> type[T]:
        _REGISTRY.setdefault(kind, {})[name] = (cls, config_cls)
        return cls

    return decorate


def _load_providers() -> None:
    for module in _PROVIDERS:
        importlib.import_module(module)


def names(kind: str) -> list[str]:
    _load_providers()
    return sorted(_REGISTRY.get(kind, {}))


def lookup(kind: str, name: str) -> tuple[type, type]:
    _load_providers()
    try:
        return _REGISTRY[kind][name]
    except KeyError:
        known = ", ".join(names(kind)) or "none"
        raise ConfigError(f"unknown {kind} {name!r}; known: {known}") from None


def make_config(config_cls: type[T], values: Mapping[str, Any]) -> T:
    """Build a frozen config from a mapping, refusing unknown keys with a clear message. A field whose type is
    itself a config (e.g. ``defaults: GenerationParams`` or ``cad: ContextAwareDecoding | None``) is built
    from a nested mapping the same way; where the type names several configs (``parallel: ParallelContexts |
    BlendedContexts | None``), the first whose fields hold the mapping's keys."""
    fields = dataclasses.fields(config_cls)  # type: ignore[arg-type]
    allowed = {f.name for f in fields}
    unknown = sorted(set(values) - allowed)
    if unknown:
        raise ConfigError(f"{config_cls.__name__}: unknown option(s) {unknown}; allowed: {sorted(allowed)}")
    no_default = dataclasses.MISSING
    required = [f.name for f in fields if f.default is no_default and f.default_factory is no_default]
    missing = [name for name in required if name not in values]
    if missing:
        raise ConfigError(f"{config_cls.__name__}: option(s) {missing} must be given")
    hints = typing.get_type_hints(config_cls)
    built = {}
    for name, value in values.items():
        nested = _config_type(hints[name], value)
        built[name] = make_config(nested, value) if nested and isinstance(value, Mapping) else value
    return config_cls(**built)


def _config_type(hint: Any, value: Any) -> type | None:
    """The dataclass a field's type names (alone, or among others and None) that takes ``value``'s keys."""
    configs = [
        candidate
        for candidate in (hint, *typing.get_args(hint))
        if dataclasses.is_dataclass(candidate) and isinstance(candidate, type)
    ]
    if len(configs) > 1 and isinstance(value, Mapping):
        for config in configs:
            if set(value) <= {f.name for f in dataclasses.fields(config)}:
                return config
    return configs[0] if configs else None


def build(kind: str, name: str, values: Mapping[str, Any] | object | None = None) -> Any:
    """An instance of the component ``name``, from option values or a ready config of its type."""
    cls, config_cls = lookup(kind, name)
    if isinstance(values, config_cls):
        return cls(values)
    if values is not None and not isinstance(values, Mapping):
        raise ConfigError(
            f"{kind} {name!r} takes a {config_cls.__name__} or a mapping, not {type(values).__name__}"
        )
    return cls(make_config(config_cls, values or {}))
