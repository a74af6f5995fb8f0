"""Shared fixtures: the bundled encoder and small LLM, loaded once per session, and the data folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from rag.settings import data_dir


@pytest.fixture(scope="session")
def minilm():
    from rag.models import load_sentence_transformer

    return load_sentence_transformer("minilm", device="cpu")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The evaluation data (``RAG_DATA_DIR``, default ../shared/data); these tests need it to exist."""
    path = data_dir()
    if not (path / "scifact" / "corpus.jsonl").is_file():
        pytest.fail(f"evaluation data not found at {path}; set RAG_DATA_DIR")
    return path


@pytest.fixture(scope="session")
def scifact_dense(shared_data, minilm):
    """MiniLM + exact inner product over all 5,183 SciFact abstracts (about 4 minutes to encode, once)."""
    from rag.corpus import read_beir
    from rag.indexes.dense import DenseConfig, DenseRetriever

    retriever = DenseRetriever(
        DenseConfig(encoder="minilm", factory="Flat", show_progress=False), encoder=minilm
    )
    retriever.add(read_beir(shared_data / "scifact"))
    return retriever
