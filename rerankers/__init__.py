"""LLM rerankers behind the one :class:`~rag.rerankers.base.Reranker` contract."""

from rag.rerankers.base import Reranker

__all__ = ["Reranker"]
