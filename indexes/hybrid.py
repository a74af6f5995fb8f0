"""Hybrid retrieval: fuse the rankings of several retrievers (reciprocal ranks, min-max or z-scores).

    >>> from rag.indexes.bm25 import BM25Retriever
    >>> from rag.indexes.hybrid import HybridConfig, HybridRetriever
    >>> from rag.types import Document
    >>> docs = [Document("a", "Cats purr when content."), Document("b", "Stocks fell sharply.")]
    >>> hybrid = HybridRetriever(HybridConfig(method="rrf"), parts=[BM25Retriever(), BM25Retriever()])
    >>> hybrid.add(docs)
    2
    >>> hybrid.search(["cats purr"], k=1)[0][0].doc_id
    'a'

Fusion of one query over parts i with weights w_i (equal by default), each part searched to ``fetch_k``:

- ``rrf``: score(d) = sum_i w_i / (rrf_k + rank_i(d)); documents a part did not return add nothing.
- ``minmax``: score(d) = sum_i w_i * (s_i(d) - min_i) / (max_i - min_i) over part i's fetched list; a
  document a part did not return counts 0 for it.
- ``zscore``: score(d) = sum_i w_i * (s_i(d) - mean_i) / std_i over part i's fetched list; a document a part
  did not return counts as that part's lowest fetched score. Parts are put on a common scale by their
  spread rather than their range, so one outlying top score does not squash the rest of a list.

A hybrid index is a folder with a manifest naming its parts by path, each part a complete index of its own
kind. ``rag index build --kind hybrid --set 'parts=["bm25", "dense"]'`` builds fresh parts of those kinds
(a part may also be ``{"kind": "dense", "factory": "HNSW32"}``); ``HybridRetriever(config, parts=[...])``
fuses retrievers built or loaded in Python. ``add`` and ``delete`` go to every part.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rag.errors import ConfigError, IndexFormatError
from rag.indexes.base import Retriever, check_queries
from rag.indexes.manifest import Manifest, atomic_directory, relative_docstore
from rag.registry import build, register
from rag.types import Document, Hit

Ranking = list[tuple[str, float]]  # (doc id, score), best first


def rrf_fuse(rankings: Sequence[Ranking], weights: Sequence[float], rrf_k: int = 60) -> dict[str, float]:
    """Reciprocal-rank fusion. ``rrf_fuse([[("a", 9.0), ("b", 1.0)], [("b", .8)]], [1, 1])["b"]`` = 2/61."""
    fused: dict[str, float] = {}
    for ranking, weight in zip(rankings, weights, strict=True):
        for rank, (doc_id, _) in enumerate(ranking, start=1):
            fused[doc_id] = fused.get(doc_id, 0.0) + weight / (rrf_k + rank)
    return fused


def minmax_fuse(rankings: Sequence[Ranking], weights: Sequence[float], rrf_k: int = 60) -> dict[str, float]:
    """Weighted sum of scores min-max normalised per part and query (``rrf_k`` is unused)."""
    fused: dict[str, float] = {}
    for ranking, weight in zip(rankings, weights, strict=True):
        if not ranking:
            continue
        scores = [s for _, s in ranking]
        low, span = min(scores), max(scores) - min(scores)
        for doc_id, score in ranking:
            norm = (score - low) / span if span > 0 else 1.0
            fused[doc_id] = fused.get(doc_id, 0.0) + weight * norm
    return fused


def zscore_fuse(rankings: Sequence[Ranking], weights: Sequence[float], rrf_k: int = 60) -> dict[str, float]:
    """Weighted sum of z-scores per part and query; a missing document gets the part's lowest z-score.

    Implemented as w_i * (s - min_i) / std_i, which ranks the same as the z-score sum (it adds the same
    constant to every document) and lets missing documents contribute 0. ``rrf_k`` is unused.
    """
    fused: dict[str, float] = {}
    for ranking, weight in zip(rankings, weights, strict=True):
        if not ranking:
            continue
        scores = [s for _, s in ranking]
        low, mean = min(scores), sum(scores) / len(scores)
        std = (sum((s - mean) ** 2 for s in scores) / len(scores)) ** 0.5
        for doc_id, score in ranking:
            norm = (score - low) / std if std > 0 else 1.0
            fused[doc_id] = fused.get(doc_id, 0.0) + weight * norm
    return fused


FUSIONS: dict[str, Callable[[Sequence[Ranking], Sequence[float], int], dict[str, float]]] = {
    "rrf": rrf_fuse,
    "minmax": minmax_fuse,
    "zscore": zscore_fuse,
}


@dataclass(frozen=True)
class HybridConfig:
    parts: tuple[Any, ...] = ()  # kinds (or {"kind": ..., **config}) of parts to build fresh
    method: str = "rrf"  # "rrf", "minmax" or "zscore"
    weights: tuple[float, ...] = ()  # one per part; empty: equal weights
    rrf_k: int = 60
    fetch_k: int = 100  # hits fetched from each part before fusing
    part_names: tuple[str, ...] = field(default=())  # sub-folder names when saved; default kind names

    def __post_init__(self) -> None:
        if self.method not in FUSIONS:
            raise ConfigError(f"unknown fusion {self.method!r}; known: {sorted(FUSIONS)}")
        if self.rrf_k < 1 or self.fetch_k < 1:
            raise ConfigError("rrf_k and fetch_k must be at least 1")
        if any(w < 0 for w in self.weights):
            raise ConfigError(f"fusion weights must not be negative, got {list(self.weights)}")


def build_part(spec: Any) -> Retriever:
    """A fresh retriever from a kind name or {"kind": ..., options}."""
    if isinstance(spec, str):
        return build("retriever", spec, {})
    if isinstance(spec, dict) and isinstance(spec.get("kind"), str):
        options = {k: v for k, v in spec.items() if k != "kind"}
        return build("retriever", spec["kind"], options)
    raise ConfigError(f'a hybrid part is a kind name or {{"kind": ..., options}}, got {spec!r}')


@register("retriever", "hybrid", HybridConfig)
class HybridRetriever(Retriever):
    kind = "hybrid"

    def __init__(self, config: HybridConfig | None = None, *, parts: Sequence[Retriever] | None = None):
        self.config = config or HybridConfig()
        self.parts = list(parts) if parts is not None else [build_part(s) for s in self.config.parts]
        if len(self.parts) < 2:
            raise ConfigError("a hybrid retriever needs at least two parts")
        if self.config.weights and len(self.config.weights) != len(self.parts):
            raise ConfigError(f"{len(self.config.weights)} weights for {len(self.parts)} parts")
        self.weights = list(self.config.weights) or [1.0] * len(self.parts)
        self.docstore_path: Path | None = None

    def __len__(self) -> int:
        return len(self.parts[0])

    def doc_ids(self) -> set[str]:
        return self.parts[0].doc_ids()

    def search(self, queries: Sequence[str], k: int = 10) -> list[list[Hit]]:
        check_queries(queries, k)
        fetch = max(k, self.config.fetch_k)
        per_part = [part.search(queries, fetch) for part in self.parts]  # [part][query] -> hits
        return [self.fuse([hits[q] for hits in per_part], k) for q in range(len(queries))]

    def fuse(self, part_hits: Sequence[Sequence[Hit]], k: int) -> list[Hit]:
        """Fuse one query's hit lists (one per part) into the top ``k``."""
        rankings = [[(h.doc_id, h.score) for h in hits] for hits in part_hits]
        fused = FUSIONS[self.config.method](rankings, self.weights, self.config.rrf_k)
        best = sorted(fused.items(), key=lambda item: (-item[1], item[0]))[:k]
        return [Hit(doc_id, score, rank, self.kind) for rank, (doc_id, score) in enumerate(best, start=1)]

    def add(self, docs: Iterable[Document]) -> int:
        docs = list(docs)
        return min(part.add(docs) for part in self.parts)

    def delete(self, ids: Iterable[str]) -> int:
        ids = list(ids)
        return max(part.delete(ids) for part in self.parts)

    def _part_names(self) -> list[str]:
        if self.config.part_names:
            names = list(self.config.part_names)
        else:
            names = [part.kind for part in self.parts]
            names = [f"{n}-{i}" if names.count(n) > 1 else n for i, n in enumerate(names)]
        if len(set(names)) != len(self.parts):
            raise ConfigError(f"hybrid part names must be distinct, one per part: {names}")
        return names

    def save(self, directory: str | Path) -> None:
        """Save every part into a sub-folder, and a manifest naming the parts' paths."""
        directory = Path(directory)
        names = self._part_names()
        with atomic_directory(directory) as work:
            for name, part in zip(names, self.parts, strict=True):
                part.docstore_path = self.docstore_path
                part.save(work / name)
            Manifest(
                kind=self.kind,
                config=asdict(self.config),
                doc_count=len(self),
                docstore=relative_docstore(directory, self.docstore_path),
                extra={
                    "parts": [{"kind": p.kind, "path": n} for n, p in zip(names, self.parts, strict=True)]
                },
            ).write(work)

    @classmethod
    def load(cls, directory: str | Path, **options: Any) -> HybridRetriever:
        from rag.indexes import load_index
        from rag.registry import make_config

        directory = Path(directory)
        manifest = Manifest.read(directory)
        if manifest.kind != cls.kind:
            raise IndexFormatError(f"{directory} holds a {manifest.kind!r} index, not a {cls.kind!r} index")
        config = make_config(HybridConfig, {**manifest.config, **options})
        parts = [load_index(directory / p["path"]) for p in manifest.extra.get("parts", [])]
        retriever = cls(config, parts=parts)
        retriever.docstore_path = manifest.docstore_path(directory)
        return retriever
