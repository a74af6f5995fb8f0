"""JPQ: tune a PQ index's query encoder and centroids against its fixed document codes.

    >>> from rag.indexes import load_index
    >>> from rag.indexes.pq_tuning import PQTuningConfig, read_training_set, tune_pq
    >>> retriever = load_index("coll/pq24")                                   # doctest: +SKIP
    >>> queries, qrels = read_training_set("data/scifact", "train")           # doctest: +SKIP
    >>> report = tune_pq(retriever, queries, qrels, PQTuningConfig(epochs=8))  # doctest: +SKIP
    >>> retriever.save("coll/pq24")  # the tuned encoder in query_encoder/, the centroids in the faiss index

After Zhan et al. (2021), "Jointly Optimizing Query Encoder and Product Quantization to Improve Retrieval
Performance". Every document keeps its PQ codes; what changes is the query encoder (a copy of the document
encoder, or the index's tuned one) and, with ``train_centroids``, the sub-quantizer centroids the codes point
at. The ranking loss is computed against the compressed index itself: each training pair (query, relevant
document) is a softmax cross-entropy over the scores of the query against *every* reconstructed document

    loss = -log softmax(<T q, D_c> / temperature)[positive]     D_c: [n, d] decoded from the codes

so every document of the index is a negative (the query's other relevant documents are masked out). The
scores never decode the documents: the query's sub-vectors against the centroids give
``[batch, M, ksub]`` lookup tables, which the PQ kernel (:func:`rag.kernels.pq_adc`, Triton on a GPU) gathers
at the codes and sums; its backward scatters the score gradients back into the tables. A step holds
``batch * n`` scores, which is cheap for a corpus of thousands to a few hundred thousand documents (IVF-PQ
adds one ``[batch, d] x [d, n]`` product with the documents' coarse centroids).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rag.corpus import read_beir_qrels, read_beir_queries
from rag.errors import ConfigError, CorpusError
from rag.indexes.pq import PQRetriever
from rag.indexes.pq_codes import PQCodes, read_codes, write_centroids

if TYPE_CHECKING:
    import torch
    from sentence_transformers import SentenceTransformer


@dataclass(frozen=True)
class PQTuningConfig:
    # defaults chosen on SciFact train (200 of its queries held out as dev), see docs/retrievers.md
    epochs: int = 8
    batch_size: int = 32  # training pairs per step
    lr: float = 5e-5  # query encoder (AdamW, linear warm-up then linear decay)
    centroid_lr: float = 3e-4  # PQ centroids (Adam, same schedule)
    train_centroids: bool = True
    temperature: float = 0.02  # softmax temperature over inner products of unit queries
    warmup: float = 0.1  # fraction of the steps
    seed: int = 0
    show_progress: bool = True

    def __post_init__(self) -> None:
        if min(self.epochs, self.batch_size) < 1:
            raise ConfigError("epochs and batch_size must be at least 1")
        if min(self.lr, self.centroid_lr, self.temperature) <= 0 or not 0 <= self.warmup < 1:
            raise ConfigError("lr, centroid_lr and temperature must be positive, warmup in [0, 1)")


@dataclass(frozen=True)
class TuningReport:
    queries: int  # training queries with at least one relevant document in the index
    pairs: int  # (query, relevant document) pairs
    steps: int
    seconds: float
    loss_before: float  # mean loss over every pair, without dropout, before and after tuning
    loss_after: float
    recall_before: float  # fraction of pairs whose document ranks in the query's top 10, before and after
    recall_after: float
    epoch_losses: tuple[float, ...]  # mean training loss of each epoch


def read_training_set(beir_folder: str | Path, split: str = "train") -> tuple[dict[str, str], dict]:
    """``({query id: text}, {query id: {doc id: relevance}})`` of the judged queries of ``split``."""
    folder = Path(beir_folder)
    if not folder.is_dir():
        raise CorpusError(f"BEIR folder not found: {folder}")
    qrels_file = folder / "qrels" / f"{split}.tsv"
    if not qrels_file.is_file():
        have = sorted(p.stem for p in (folder / "qrels").glob("*.tsv"))
        raise CorpusError(
            f"{folder} has no qrels for split {split!r} ({qrels_file}); splits: {have or 'none'}"
        )
    qrels = read_beir_qrels(folder, split)
    if not any(rel > 0 for judged in qrels.values() for rel in judged.values()):
        raise CorpusError(f"{qrels_file} judges no document relevant: nothing to train on")
    texts = read_beir_queries(folder)
    missing = sorted(set(qrels) - set(texts))
    if missing:
        raise CorpusError(f"{folder}: {len(missing)} judged queries have no text, e.g. {missing[0]!r}")
    return {qid: texts[qid] for qid in qrels}, qrels


def tune_pq(
    retriever: PQRetriever,
    queries: Mapping[str, str],
    qrels: Mapping[str, Mapping[str, int]],
    config: PQTuningConfig | None = None,
    *,
    data: Mapping[str, Any] | None = None,
) -> TuningReport:
    """Tune ``retriever``'s query encoder (and centroids) in place; ``data`` describes the training data for
    the manifest (e.g. ``{"beir": "data/scifact", "split": "train"}``).

    Training starts from the index's current state: its tuned query encoder if it has one, else a copy of
    the document encoder, and its current centroids.
    """
    import torch

    config = config or PQTuningConfig()
    if not isinstance(retriever, PQRetriever):
        raise ConfigError(f"tune-pq needs a pq, opq or ivfpq index, got a {retriever.kind!r} index")
    codes = read_codes(retriever.dense.index)
    pairs, query_ids = _training_pairs(retriever, codes, queries, qrels)
    torch.manual_seed(config.seed)
    start_from = retriever.query_encoder if retriever.query_encoder is not None else retriever.dense.encoder
    model = copy.deepcopy(start_from)
    device = model.device
    trainer = _Trainer(model, codes, [queries[q] for q in query_ids], pairs, config, device)

    start = time.perf_counter()
    loss_before, recall_before = trainer.evaluate()
    epoch_losses = trainer.train()
    loss_after, recall_after = trainer.evaluate()
    seconds = time.perf_counter() - start

    model.eval()
    retriever.query_encoder = model
    if config.train_centroids:
        write_centroids(retriever.dense.index, trainer.centroids.detach().cpu().numpy())
    report = TuningReport(
        queries=len(query_ids),
        pairs=len(pairs),
        steps=trainer.steps,
        seconds=round(seconds, 3),
        loss_before=loss_before,
        loss_after=loss_after,
        recall_before=recall_before,
        recall_after=recall_after,
        epoch_losses=tuple(epoch_losses),
    )
    retriever.tuning = {"data": dict(data or {}), "config": asdict(config), "report": asdict(report)}
    return report


def _training_pairs(
    retriever: PQRetriever,
    codes: PQCodes,
    queries: Mapping[str, str],
    qrels: Mapping[str, Mapping[str, int]],
) -> tuple[np.ndarray, list[str]]:
    """[p, 2] int64 (query number, document row in ``codes``) for each relevant, indexed document."""
    doc_ids = retriever.dense.ids_of_labels(codes.labels)
    row_of = {doc_id: row for row, doc_id in enumerate(doc_ids) if doc_id is not None}
    query_ids: list[str] = []
    pairs: list[tuple[int, int]] = []
    for qid, judged in qrels.items():
        rows = [row_of[d] for d, rel in judged.items() if rel > 0 and d in row_of]
        if not rows:
            continue
        if qid not in queries:
            raise ConfigError(f"judged query {qid!r} has no text")
        pairs.extend((len(query_ids), row) for row in rows)
        query_ids.append(qid)
    if not pairs:
        raise ConfigError("no training pairs: no judged-relevant document of these qrels is in the index")
    return np.asarray(pairs, dtype=np.int64), query_ids


class _Trainer:
    """The training loop: full-corpus softmax over the documents' PQ scores."""

    def __init__(
        self,
        model: SentenceTransformer,
        codes: PQCodes,
        texts: Sequence[str],
        pairs: np.ndarray,
        config: PQTuningConfig,
        device: torch.device,
    ):
        import torch

        self.model, self.texts, self.pairs, self.config = model, list(texts), pairs, config
        self.codes = torch.as_tensor(codes.codes, device=device)  # [n, M]
        self.centroids = torch.nn.Parameter(torch.as_tensor(codes.centroids, device=device).clone())
        self.centroids.requires_grad_(config.train_centroids)
        self.rotation = None if codes.rotation is None else torch.as_tensor(codes.rotation, device=device)
        self.offsets = None if codes.offsets is None else torch.as_tensor(codes.offsets, device=device)
        # [queries, n] bool: True where the document is relevant to the query (masked unless the target)
        self.relevant = torch.zeros(len(texts), len(codes.codes), dtype=torch.bool, device=device)
        self.relevant[pairs[:, 0], pairs[:, 1]] = True
        self.steps = 0

    def scores(self, q: torch.Tensor) -> torch.Tensor:
        """[b, n]: ``<q, offset + concat_m C[m, code_m]>`` for every document, without decoding any.

        The query's sub-vectors against every centroid give lookup tables ``[b, M, ksub]``; the PQ kernel
        gathers them at the codes and sums (asymmetric distance). Gradients reach ``q`` and the centroids
        through the tables.
        """
        import torch

        from rag.kernels import pq_adc

        subspaces, _, dsub = self.centroids.shape
        tables = torch.einsum("bmd,mkd->bmk", q.reshape(len(q), subspaces, dsub), self.centroids)
        scores = pq_adc(tables, self.codes)
        return scores if self.offsets is None else scores + q @ self.offsets.T

    def encode(self, texts: list[str]) -> torch.Tensor:
        """[len(texts), d] unit query vectors, rotated as the index rotates them."""
        import torch
        import torch.nn.functional as F

        preprocess = getattr(self.model, "preprocess", None) or self.model.tokenize  # sentence-transformers 5
        features = preprocess(texts)
        features = {
            k: v.to(self.codes.device) if isinstance(v, torch.Tensor) else v for k, v in features.items()
        }
        q = F.normalize(self.model(features)["sentence_embedding"], dim=-1)
        return q if self.rotation is None else q @ self.rotation.T

    def losses(self, batch: np.ndarray, scores: torch.Tensor) -> torch.Tensor:
        """[len(batch)] cross-entropy of each pair's document among all documents, from its [b, n] scores."""
        import torch
        import torch.nn.functional as F

        query_rows = torch.as_tensor(batch[:, 0], device=scores.device)
        targets = torch.as_tensor(batch[:, 1], device=scores.device)
        logits = scores / self.config.temperature  # [b, n]
        others = self.relevant[query_rows].clone()
        others[torch.arange(len(batch)), targets] = False
        return F.cross_entropy(logits.masked_fill(others, float("-inf")), targets, reduction="none")

    def train(self) -> list[float]:
        import torch
        from tqdm.auto import tqdm

        c = self.config
        batches_per_epoch = math.ceil(len(self.pairs) / c.batch_size)
        total = c.epochs * batches_per_epoch
        warmup = max(1, int(c.warmup * total))
        groups: list[dict[str, Any]] = [{"params": list(self.model.parameters()), "lr": c.lr}]
        if c.train_centroids:
            groups.append({"params": [self.centroids], "lr": c.centroid_lr, "weight_decay": 0.0})
        optimizer = torch.optim.AdamW(groups, weight_decay=0.01)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: min((step + 1) / warmup, max(0.0, (total - step) / (total - warmup + 1)))
        )
        generator = torch.Generator().manual_seed(c.seed)
        epoch_losses = []
        self.model.train()
        with tqdm(total=total, desc="tune-pq", unit="step", disable=not c.show_progress) as bar:
            for epoch in range(c.epochs):
                order = torch.randperm(len(self.pairs), generator=generator).numpy()
                seen = 0.0
                for start in range(0, len(order), c.batch_size):
                    batch = self.pairs[order[start : start + c.batch_size]]
                    q = self.encode([self.texts[i] for i in batch[:, 0]])
                    loss = self.losses(batch, self.scores(q)).mean()
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
                    optimizer.step()
                    schedule.step()
                    self.steps += 1
                    seen += loss.item() * len(batch)
                    bar.update()
                    bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}")
                epoch_losses.append(round(seen / len(self.pairs), 4))
        self.model.eval()
        return epoch_losses

    def evaluate(self, batch_size: int = 128) -> tuple[float, float]:
        """(mean loss, recall@10) over every pair, in eval mode (no dropout)."""
        import torch

        self.model.eval()
        with torch.no_grad():
            q = torch.cat(
                [self.encode(self.texts[i : i + batch_size]) for i in range(0, len(self.texts), batch_size)]
            )
            scores = self.scores(q)  # [queries, n]
            losses = self.losses(self.pairs, scores[self.pairs[:, 0]])
            targets = torch.as_tensor(self.pairs[:, 1])
            target_scores = scores[self.pairs[:, 0], targets]
            recall = ((scores[self.pairs[:, 0]] > target_scores[:, None]).sum(dim=1) < 10).float().mean()
        return round(losses.mean().item(), 4), round(recall.item(), 4)
