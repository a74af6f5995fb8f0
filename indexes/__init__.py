"""Retrievers and the on-disk index format."""

from __future__ import annotations

from pathlib import Path

from rag.indexes.base import Retriever
from rag.indexes.manifest import Manifest

__all__ = ["Manifest", "Retriever", "load_index"]


def load_index(directory: str | Path, **options: object) -> Retriever:
    """Open any saved index: the manifest names the retriever kind that reads it."""
    from rag.registry import lookup

    manifest = Manifest.read(directory)
    cls, _ = lookup("retriever", manifest.kind)
    return cls.load(directory, **options)
