"""SPLADE term weights from a masked-LM: w_j = max over tokens t of log1p(relu(logits[t, j])), padding masked.

    >>> from rag.indexes.splade_encoder import SpladeEncoder
    >>> encoder = SpladeEncoder("splade-tiny")
    >>> weights = encoder.encode(["cats purr"], max_length=64)[0]   # {wordpiece: weight}
    >>> all(w > 0 for w in weights.values())
    True

``quantise`` turns weights into the integer impacts a Lucene impact index stores: round(w * scale), zeros
dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from rag.errors import ModelError
from rag.models import resolve_model


class SpladeEncoder:
    def __init__(self, name: str = "splade-tiny", device: str | None = None):
        from transformers import AutoModelForMaskedLM, AutoTokenizer

        source = resolve_model(name)
        self.name = name
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(source))
            self.model = AutoModelForMaskedLM.from_pretrained(str(source)).to(self.device).eval()
        except OSError as error:
            raise ModelError(f"cannot load the SPLADE model {name!r} from {source}: {error}") from None
        self.vocab = self.tokenizer.convert_ids_to_tokens(list(range(len(self.tokenizer))))
        self.source = source if isinstance(source, Path) else None

    @torch.inference_mode()
    def weights(self, texts: Sequence[str], max_length: int) -> torch.Tensor:
        """[len(texts), vocab] float32 term weights (dense; most entries are zero)."""
        batch = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        ).to(self.device)
        logits = self.model(**batch).logits  # [batch, tokens, vocab]
        mask = batch["attention_mask"].unsqueeze(-1)  # [batch, tokens, 1]
        return (torch.log1p(torch.relu(logits)) * mask).amax(dim=1).float().cpu()  # [batch, vocab]

    def encode(self, texts: Sequence[str], max_length: int, batch_size: int = 16) -> list[dict[str, float]]:
        """One {token: weight} dict (non-zero weights only) per text."""
        return [
            {self.vocab[j]: float(row[j]) for j in row.nonzero().flatten().tolist()}
            for start in range(0, len(texts), batch_size)
            for row in self.weights(texts[start : start + batch_size], max_length)
        ]

    def encode_quantised(
        self,
        texts: Sequence[str],
        max_length: int,
        scale: float,
        batch_size: int = 16,
        progress: bool = False,
    ) -> list[dict[str, int]]:
        """One {token: round(weight * scale)} dict (non-zero impacts only) per text, in input order."""
        from tqdm.auto import tqdm

        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths share a batch
        out: list[dict[str, int]] = [{} for _ in texts]
        starts = range(0, len(texts), batch_size)
        for start in tqdm(starts, desc="splade", unit="batch", disable=not progress or len(starts) < 2):
            chunk = order[start : start + batch_size]
            impacts = torch.round(self.weights([texts[i] for i in chunk], max_length) * scale).to(torch.int32)
            for i, row in zip(chunk, impacts, strict=True):  # row: [vocab]
                nz = row.nonzero().flatten()
                out[i] = dict(zip((self.vocab[j] for j in nz.tolist()), row[nz].tolist(), strict=True))
        return out
