"""Shared fixtures: the bundled encoder and small LLM, loaded once per session, and the data folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from rag.settings import data_dir

if not torch.cuda.is_available():
    # The Triton kernels run under the interpreter here. Triton reads the setting when its modules are first
    # imported (transformers may import them early), so it is set before any test module loads.
    os.environ.setdefault("TRITON_INTERPRET", "1")


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


def _one_thread_model(precision: str):
    """The bundled SmolLM2-135M ``(model, tokenizer)`` at ``precision``, with one torch thread meanwhile.

    On a busy 2-core machine two threads per forward were measured 10-20x slower than one (20 tokens:
    2.7 s vs 29-62 s); with an idle machine both are fast.
    """
    import torch

    from rag.lm import load_causal_lm

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_causal_lm("smollm2-135m-instruct", device="cpu", precision=precision)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def smollm2():
    """SmolLM2-135M as the product runs it on a CPU: int4/int8 weights, bf16 activations (rag.lm)."""
    yield from _one_thread_model("mixed")


@pytest.fixture(scope="module")
def smollm2_exact():
    """SmolLM2-135M in float32: for checks that two computations are the same arithmetic up to fp32 rounding
    (a packed batch against single rows, blended caches against sequential ones)."""
    yield from _one_thread_model("exact")


@pytest.fixture(scope="module")
def ray_cluster():
    """The address of a local Ray cluster of two node processes (a head and one more), one CPU each."""
    from ray_cluster import local_ray_cluster

    with local_ray_cluster(nodes=2) as address:
        yield address
