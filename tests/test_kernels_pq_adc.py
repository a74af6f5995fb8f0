"""PQ asymmetric distance: torch reference and Triton kernel (forward and backward), and JPQ tuning on it.

Without a GPU the Triton kernel runs under the interpreter: tests/conftest.py sets ``TRITON_INTERPRET=1``
before anything imports Triton.
"""

from __future__ import annotations

import copy

import faiss
import numpy as np
import pytest
import torch

from rag.indexes.pq_codes import read_codes
from rag.indexes.pq_tuning import PQTuningConfig, _Trainer
from rag.kernels import pq_adc
from rag.kernels.pq_adc_ref import pq_adc_reference
from rag.kernels.pq_adc_triton import pq_adc_triton

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def naive_adc(tables: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """scores[q, n] = Σ_m tables[q, m, codes[n, m]], one subspace at a time (autograd gives its gradient)."""
    return sum(tables[:, m, codes[:, m]] for m in range(codes.shape[1]))


SHAPES = [(1, 1, 1, 1), (5, 3, 13, 77), (17, 4, 256, 130), (2, 7, 16, 1)]  # (Q, M, ksub, N)


@pytest.mark.parametrize(("queries", "subspaces", "ksub", "docs"), SHAPES)
def test_reference_matches_the_naive_sum_and_its_gradient(queries, subspaces, ksub, docs) -> None:
    g = torch.Generator().manual_seed(0)
    tables = torch.randn(queries, subspaces, ksub, generator=g, requires_grad=True)
    codes = torch.randint(0, ksub, (docs, subspaces), generator=g)
    upstream = torch.randn(queries, docs, generator=g)
    expected = naive_adc(tables, codes)
    (expected_grad,) = torch.autograd.grad(expected, tables, upstream)
    scores = pq_adc_reference(tables, codes)
    (grad,) = torch.autograd.grad(scores, tables, upstream)
    torch.testing.assert_close(scores, expected)
    torch.testing.assert_close(grad, expected_grad)


@pytest.mark.parametrize(("queries", "subspaces", "ksub", "docs"), SHAPES)
def test_triton_matches_the_reference_forward_and_backward(queries, subspaces, ksub, docs) -> None:
    g = torch.Generator().manual_seed(1)
    tables = torch.randn(queries, subspaces, ksub, generator=g).to(DEVICE).requires_grad_()
    codes = torch.randint(0, ksub, (docs, subspaces), generator=g).to(DEVICE)
    upstream = torch.randn(queries, docs, generator=g).to(DEVICE)
    expected = pq_adc_reference(tables, codes)
    (expected_grad,) = torch.autograd.grad(expected, tables, upstream)
    scores = pq_adc_triton(tables, codes.to(torch.int32))  # faiss-sized codes fit int32 as well
    (grad,) = torch.autograd.grad(scores, tables, upstream)
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-5)


def test_triton_reads_strided_tables() -> None:
    g = torch.Generator().manual_seed(2)
    tables = torch.randn(9, 20, 3, generator=g).permute(0, 2, 1)  # [Q=9, M=3, ksub=20], not contiguous
    codes = torch.randint(0, 20, (3, 41), generator=g).T  # [N=41, M=3], not contiguous
    torch.testing.assert_close(pq_adc_triton(tables, codes), pq_adc_reference(tables, codes))


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="expected tables"):
        pq_adc(torch.zeros(2, 3, 4), torch.zeros(5, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="int32 or int64"):
        pq_adc(torch.zeros(2, 3, 4), torch.zeros(5, 3))


# -- JPQ tuning scores through the kernel: same training as decoding the documents ---------------------------


class TinyEncoder(torch.nn.Module):
    """A stand-in query encoder, a bag of character embeddings (tokenize + forward, as ST models)."""

    def __init__(self, dim: int):
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.EmbeddingBag(128, dim, mode="mean")

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        width = max(map(len, texts))
        return {"ids": torch.tensor([[ord(c) % 128 for c in t.ljust(width)] for t in texts])}

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"sentence_embedding": self.embed(features["ids"])}


class DecodingTrainer(_Trainer):
    """The tuning loop as it was before the kernel: decode every document, then one matrix product."""

    def scores(self, q: torch.Tensor) -> torch.Tensor:
        m = torch.arange(self.centroids.shape[0])
        decoded = self.centroids[m, self.codes].flatten(1)  # [n, M, dsub] -> [n, d]
        docs = decoded if self.offsets is None else decoded + self.offsets
        return q @ docs.T


@pytest.mark.parametrize("factory", ["PQ4x4", "OPQ4,PQ4x4", "IVF4,PQ4x5"])
def test_tuning_through_the_kernel_trains_as_decoding_did(factory: str) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 16)).astype(np.float32)
    index = faiss.IndexIDMap2(faiss.index_factory(16, factory, faiss.METRIC_INNER_PRODUCT))
    index.train(x)
    index.add_with_ids(x, np.arange(300, dtype=np.int64))
    codes = read_codes(index)
    texts = [f"query number {i} about topic {i % 7}" for i in range(24)]
    pairs = np.stack([np.arange(24), rng.integers(0, 300, 24)], axis=1).astype(np.int64)
    pairs = np.concatenate([pairs, [[0, 5], [3, 7]]])  # two queries with a second relevant document
    config = PQTuningConfig(epochs=2, batch_size=8, lr=1e-2, centroid_lr=1e-2, show_progress=False)
    runs = []
    for trainer_class in (DecodingTrainer, _Trainer):
        trainer = trainer_class(TinyEncoder(16), codes, texts, pairs, config, torch.device("cpu"))
        before = trainer.evaluate()
        torch.manual_seed(0)
        losses = trainer.train()
        runs.append((before, losses, trainer.evaluate(), trainer.centroids.detach(), trainer.model))
    (before, losses, after, centroids, model), (before2, losses2, after2, centroids2, model2) = runs
    assert after[0] < before[0]  # it trained
    np.testing.assert_allclose(before2, before, atol=1e-4)  # (loss, recall) rounded to 4 places
    np.testing.assert_allclose(losses2, losses, atol=1e-4)
    np.testing.assert_allclose(after2, after, atol=1e-4)
    torch.testing.assert_close(centroids2, centroids, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model2.embed.weight, model.embed.weight, rtol=1e-5, atol=1e-5)
    assert not torch.equal(centroids, torch.as_tensor(codes.centroids))  # the centroids moved


def test_tuning_scores_and_gradients_match_decoding() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((200, 12)).astype(np.float32)
    index = faiss.IndexIDMap2(faiss.index_factory(12, "IVF2,PQ3x4", faiss.METRIC_INNER_PRODUCT))
    index.train(x)
    index.add_with_ids(x, np.arange(200, dtype=np.int64))
    codes = read_codes(index)
    pairs = np.array([[0, 1], [1, 2]], dtype=np.int64)
    config = PQTuningConfig(show_progress=False)
    kernel = _Trainer(TinyEncoder(12), codes, ["a", "b"], pairs, config, torch.device("cpu"))
    decoding = DecodingTrainer(
        copy.deepcopy(kernel.model), codes, ["a", "b"], pairs, config, torch.device("cpu")
    )
    q = torch.randn(5, 12, requires_grad=True)
    results = []
    for trainer in (kernel, decoding):
        scores = trainer.scores(q)
        grads = torch.autograd.grad(scores.square().sum(), [q, trainer.centroids])
        results.append((scores, *grads))
    for ours, theirs in zip(*results, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)  # fp32 sums in another order
