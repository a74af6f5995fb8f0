"""Draft continuations merged into one token tree: shared prefixes become shared nodes.

>>> tree = TokenTree.build(root=9, drafts=[[1, 2, 3], [1, 2, 4], [5]])
>>> tree.tokens, tree.parents
([9, 1, 2, 3, 4, 5], [-1, 0, 1, 2, 2, 0])
>>> tree.children[2], tree.children[0]
([3, 4], [1, 5])

Node 0 is the root: the last emitted token, not yet in the KV cache. Parents come before their children, as
:meth:`rag.generation.decode.kv_batch.KVBatch.extend` needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class TokenTree:
    tokens: list[int]  # token of each node; node 0 is the root
    parents: list[int]  # parent node of each node; -1 for the root
    children: list[list[int]]  # child nodes of each node, in insertion order

    @classmethod
    def build(cls, root: int, drafts: Sequence[Sequence[int]]) -> TokenTree:
        tokens, parents, children = [root], [-1], [[]]
        for draft in drafts:
            node = 0
            for token in draft:
                child = next((c for c in children[node] if tokens[c] == token), None)
                if child is None:
                    child = len(tokens)
                    tokens.append(token)
                    parents.append(node)
                    children.append([])
                    children[node].append(child)
                node = child
        return cls(tokens, parents, children)

    def __len__(self) -> int:
        return len(self.tokens)
