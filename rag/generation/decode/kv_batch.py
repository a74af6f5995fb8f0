"""Several prompts decoded in lock-step: left-padded rows in one KV cache, extended by a shared token tree.

Every decoding mode drives the model through this one class. Plain decoding has one row and extends it by
one token per step; context-aware decoding adds a second row (the prompt without passages), so that both rows
run in the same forward pass; speculative drafting extends all rows by a tree of drafted tokens in one forward
and then keeps only the accepted path.

The mask is always built here, as a 4-D additive float mask ``# [rows, 1, new, cached + new]`` (0 where a
query may attend, the dtype's minimum where not), with explicit position ids. transformers (4.4x and 5.x)
passes a 4-D mask through ``create_causal_mask`` unchanged, and eager and SDPA attention add it to the scores.
Flash-attention kernels take no 4-D mask: load models with eager or SDPA attention.

>>> import torch
>>> tree_mask([-1, 0, 0, 1]).int().tolist()  # root, two children of the root, a grandchild under node 1
[[1, 0, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0], [1, 1, 0, 1]]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from rag.errors import ConfigError
from rag.lm import token_decoder
from rag.lm.kv_cache import new_cache

if TYPE_CHECKING:
    from rag.lm.llama_cpp_decoder import DecoderSession


def tree_mask(parents: Sequence[int]) -> torch.Tensor:
    """``# [n, n]`` bool: node ``i`` sees node ``j`` when ``j`` is ``i`` or one of its ancestors.

    ``parents[i]`` is the index of node ``i``'s parent, or -1 for a child of the cached sequence; parents come
    before their children.
    """
    n = len(parents)
    mask = torch.eye(n, dtype=torch.bool)
    for i, parent in enumerate(parents):
        if parent >= i:
            raise ValueError(f"node {i} has parent {parent}; parents must come before their children")
        if parent >= 0:
            mask[i] |= mask[parent]
    return mask


def tree_depths(parents: Sequence[int]) -> list[int]:
    """Depth of each node: 0 for a child of the cached sequence."""
    depths: list[int] = []
    for parent in parents:
        depths.append(0 if parent < 0 else depths[parent] + 1)
    return depths


def packed_causal_mask(lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For pieces of ``lengths`` ``# [pieces]`` laid end to end: each token's position within its piece
    ``# [total]``, and the mask ``# [total, total]`` letting a token see its own piece up to itself.

    >>> offset, allowed = packed_causal_mask(torch.tensor([2, 1]))
    >>> offset.tolist(), allowed.int().tolist()
    ([0, 1, 0], [[1, 0, 0], [1, 1, 0], [0, 0, 1]])
    """
    piece = torch.repeat_interleave(torch.arange(len(lengths), device=lengths.device), lengths)  # [total]
    offset = torch.arange(len(piece), device=lengths.device) - (lengths.cumsum(0) - lengths)[piece]
    allowed = (piece[:, None] == piece[None, :]) & (offset[:, None] >= offset[None, :])
    return offset, allowed


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The additive float mask of the bool ``allowed``: 0 where a query attends, min elsewhere."""
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)


class KVBatch:
    """``rows`` prompts of different lengths, left-padded, sharing one ``DynamicCache``.

    ``prefill()`` runs all prompts; ``extend(tokens, parents)`` appends the same token tree to every row and
    returns each node's next-token logits; ``keep(nodes)`` then keeps the KV of those nodes only (a path from
    the root), so that the cache again holds plain sequences. Each call is exactly one forward of the model;
    several prompts are prefilled packed into one sequence, then laid out as left-padded rows.

    When the model decodes in llama.cpp (``RuntimePolicy(decoder="llama.cpp")``, :mod:`rag.lm`), the prompt
    still runs here and its KV cache then moves into a llama.cpp session, which runs every later forward.
    """

    def __init__(self, model: Any, prompts: Sequence[torch.Tensor]) -> None:  # each [prompt_len_r]
        if not prompts:
            raise ValueError("no prompts")
        self.model = model
        self.device = prompts[0].device
        width = max(len(p) for p in prompts)
        self._ids = torch.zeros(len(prompts), width, dtype=torch.long, device=self.device)  # [rows, width]
        self._valid = torch.zeros_like(self._ids, dtype=torch.bool)  # [rows, width]; True: a real token
        for row, prompt in enumerate(prompts):
            self._ids[row, width - len(prompt) :] = prompt
            self._valid[row, width - len(prompt) :] = True
        self.lengths = self._valid.sum(dim=1)  # [rows] real tokens in the cache (after prefill)
        self.cache = new_cache(model)
        self._pending = 0  # nodes of the last extend() not yet settled by keep()
        self.forward_calls = 0
        self._session: DecoderSession | None = None  # the llama.cpp session after prefill, if any

    def __del__(self) -> None:
        if self._session is not None:
            self._session.close()

    @property
    def rows(self) -> int:
        return self._ids.shape[0]

    def prefill(self, room: int = 0) -> torch.Tensor:
        """Run the prompts; next-token logits after each prompt ``# [rows, vocab]``. ``room``: tokens that
        may follow (the size of a llama.cpp decoder's context)."""
        logits = self._prefill()
        decoder = token_decoder(self.model)
        if decoder is not None:
            rows = self._prompt_kv()
            self._session = decoder.session(max(kv.shape[2] for kv in rows) + room + 1)
            self._session.load(rows, self.cache.layers[0].keys.shape[-1])
            self.cache = new_cache(self.model)  # the prompt's KV lives in llama.cpp now
        return logits

    def _prompt_kv(self) -> list[torch.Tensor]:
        """Each row's cached prompt, real tokens in order ``# [layers, 2, tokens, kv_heads * head_dim]``."""
        rows = []
        for row in range(self.rows):
            columns = self._valid[row].nonzero()[:, 0]  # [tokens]
            layers = [
                torch.stack([layer.keys[row][:, columns], layer.values[row][:, columns]])
                for layer in self.cache.layers
            ]  # each [2, kv_heads, tokens, head_dim]
            kv = torch.stack(layers).transpose(2, 3)  # [layers, 2, tokens, kv_heads, head_dim]
            rows.append(kv.flatten(3))
        return rows

    def _prefill(self) -> torch.Tensor:
        if self.cache.get_seq_length() > 0:
            raise RuntimeError("prefill() runs once")
        if self.rows > 1:
            return self._prefill_packed()
        width = self._ids.shape[1]
        causal = torch.ones(width, width, dtype=torch.bool, device=self.device).tril()  # [width, width]
        allowed = causal[None, None] & self._valid[:, None, None, :]  # [rows, 1, width, width]
        positions = (self._valid.cumsum(dim=1) - 1).clamp(min=0)  # [rows, width]; padding gets 0
        logits = self._run(self._ids, allowed, positions, logits_to_keep=1)  # [rows, 1, vocab]
        return logits[:, -1]

    def _prefill_packed(self) -> torch.Tensor:
        """Several prompts as pieces of one sequence (no padding): one forward whose cost is the sum of their
        lengths, not ``rows`` times the longest (CAD's context-free prompt is much shorter than the main one).
        Each piece sees itself only and starts at position 0; its KV is then laid out in its left-padded row.
        """
        pieces = [self._ids[r, self._valid[r]] for r in range(self.rows)]  # each [len_r]
        lengths = torch.tensor([len(p) for p in pieces], device=self.device)  # [rows]
        offset, allowed = packed_causal_mask(lengths)  # [total], [total, total]
        rows_cache, self.cache = self.cache, new_cache(self.model)  # run on a packed cache
        ends = lengths.cumsum(0) - 1  # [rows] index of each piece's last token
        logits = self._run(
            torch.cat(pieces)[None], allowed[None, None], offset[None], logits_to_keep=ends
        )  # [1, rows, vocab]
        width = self._ids.shape[1]
        for layer, stored in enumerate(self.cache.layers):
            rows_kv = []
            for states in (stored.keys, stored.values):  # [1, kv_heads, total, head_dim]
                padded = states.new_zeros(self.rows, states.shape[1], width, states.shape[3])
                for r, (end, length) in enumerate(zip(ends.tolist(), lengths.tolist(), strict=True)):
                    padded[r, :, width - length :] = states[0, :, end + 1 - length : end + 1]
                rows_kv.append(padded)  # [rows, kv_heads, width, head_dim]
            rows_cache.update(*rows_kv, layer)
        self.cache = rows_cache
        return logits[0]

    def extend(self, tokens: Sequence[int], parents: Sequence[int] | None = None) -> torch.Tensor:
        """Append a token tree to every row; logits after each node ``# [rows, n, vocab]``.

        ``parents`` as in :func:`tree_mask`. With ``parents=None`` the tokens are a chain and are all kept;
        with ``parents`` given, call :meth:`keep` next to choose the nodes whose KV stays.
        """
        if self._pending:
            raise RuntimeError("call keep() to settle the previous extend() first")
        n = len(tokens)
        chain = parents is None
        parents = list(range(-1, n - 1)) if chain else list(parents)
        if len(parents) != n or n == 0:
            raise ValueError(f"got {n} tokens and {len(parents)} parents")
        depths = tree_depths(parents)
        if self._session is not None:
            logits = self._session.extend(tokens, parents, depths)  # [rows, n, vocab]
            self.forward_calls += 1
            self._pending = n
            if chain:
                self.keep(range(n))
            return logits
        tree = tree_mask(parents).to(self.device)  # [n, n]
        past = self._valid[:, None, None, :].expand(-1, 1, n, -1)  # [rows, 1, n, cached]
        nodes = tree[None, None].expand(self.rows, 1, n, n)  # [rows, 1, n, n]
        allowed = torch.cat([past, nodes], dim=-1)  # [rows, 1, n, cached + n]
        positions = self.lengths[:, None] + torch.tensor(depths, device=self.device)[None, :]  # [rows, n]
        ids = torch.tensor([list(tokens)] * self.rows, dtype=torch.long, device=self.device)  # [rows, n]
        logits = self._run(ids, allowed, positions, logits_to_keep=0)  # [rows, n, vocab]
        self._pending = n
        if chain:
            self.keep(range(n))
        return logits

    def keep(self, nodes: Sequence[int]) -> None:
        """Keep the KV of ``nodes`` (indices into the last ``extend``, a root-to-node path in order) only."""
        n = self._pending
        nodes = list(nodes)
        if any(not 0 <= i < n for i in nodes):
            raise ValueError(f"nodes {nodes} are not among the {n} nodes of the last extend()")
        if self._session is not None:
            self._session.keep(nodes)
            self.lengths = self.lengths + len(nodes)
            self._pending = 0
            return
        cached = self.cache.get_seq_length() - n
        if nodes != list(range(n)):
            prefix = nodes == list(range(len(nodes)))  # the first nodes (a chain's accepted part)
            index = None
            if not prefix:
                index = torch.tensor([*range(cached), *(cached + i for i in nodes)], device=self.device)
            for layer in self.cache.layers:
                if not getattr(layer, "is_croppable", False) or getattr(layer, "is_sliding", False):
                    name = type(layer).__name__
                    raise ConfigError(f"cannot reorder a {name} cache; drafting needs full attention")
                if index is None:  # cut the rest: a view, no copy (the next step's update copies the cache)
                    layer.keys = layer.keys[..., : cached + len(nodes), :]
                    layer.values = layer.values[..., : cached + len(nodes), :]
                else:
                    layer.keys = layer.keys.index_select(-2, index)  # [rows, heads, cached + kept, head_dim]
                    layer.values = layer.values.index_select(-2, index)
        kept = torch.ones(self.rows, len(nodes), dtype=torch.bool, device=self.device)
        self._valid = torch.cat([self._valid[:, :cached], kept], dim=1)  # [rows, cached + kept]
        self.lengths = self.lengths + len(nodes)
        self._pending = 0

    def _run(
        self,
        ids: torch.Tensor,  # [rows, n]
        allowed: torch.Tensor,  # [rows, 1, n, cached + n] bool
        positions: torch.Tensor,  # [rows, n]
        logits_to_keep: int | torch.Tensor,  # the last n positions, or these positions
    ) -> torch.Tensor:
        self.forward_calls += 1
        out = self.model(
            input_ids=ids,
            attention_mask=additive_mask(allowed, self.model.dtype),
            position_ids=positions,
            cache=self.cache,
            use_cache=True,
            logits_to_keep=logits_to_keep,
        )
        return out.logits.float()  # [rows, n or 1, vocab]
