"""llama.cpp's engine as the decoder: the prompt runs in torch, the answer's tokens in llama.cpp.

torch reads a prompt 4-5x faster than llama.cpp on this kind of CPU (AMX bf16 tiles), and llama.cpp decodes
1.6x faster than torch's eager step (its weight kernels read the GGUF blocks as stored, in one C++ call per
token). With ``RuntimePolicy(decoder="llama.cpp")`` the prompt (and the passage KV store, passage pruning,
the rerankers) stays in torch, and after the prompt the KV cache moves into a llama.cpp context through
``llama_state_seq_set_data``: keys after RoPE and values, f16, one llama.cpp sequence per row. Every later
forward of :class:`~rag.generation.decode.kv_batch.KVBatch` (a token, a chain, a draft tree) then runs in
llama.cpp on the same GGUF file.

A draft tree is one llama.cpp batch: each root-to-leaf branch is a sequence (the cached prompt is shared by
``llama_memory_seq_cp``, no copy in a unified cache), each node belongs to the branches through it, and
llama.cpp's mask (a token sees the cells of its first sequence at positions up to its own) is then the tree
mask. Keeping a path copies its cells into the row's sequence and drops the branches.

Greedy drafting gives plain decoding's tokens exactly when every forward adds up the visible cells in the
same order: llama.cpp sums attention over cells in their order in the cache, and a new token takes the first
free cell. A rejected node freed among kept ones would leave a hole that the next token fills, ahead of cells
at earlier positions. So rejected nodes that lie before a kept one are *parked* (moved to a sequence no token
reads) and only those after the last kept cell are freed; each row's visible cells then stay in position
order, as in plain decoding. Parked cells are released with the session (or, if they fill the context, all
at once, after which a later draft may round differently from plain decoding).

llama-cpp-python is the optional ``bench`` extra, built from source (docs/benchmarks.md).
"""

from __future__ import annotations

import ctypes
import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rag.errors import ConfigError, ModelError

INSTALL_HINT = "pip install 'ragloom[bench]' (llama-cpp-python, built from source; see docs/benchmarks.md)"
_F16 = 1  # ggml_type GGML_TYPE_F16
_MIN_CONTEXT = 4096  # tokens a llama.cpp context holds at least
_BATCH = 512  # tokens of one llama.cpp forward at most (rows x draft tree nodes)
_SEQUENCES = 64  # llama.cpp sequences per context: rows x branches of a draft tree, and the parking
_PARKED = _SEQUENCES - 1  # the sequence of rejected draft cells kept in place (see the module doc)
# model type -> whether llama.cpp's keys pair dimensions (2i, 2i+1) for RoPE where transformers pairs
# (i, i+d/2): for LLaMA-type files the converter permuted the query and key weights (llama.cpp's "normal"
# RoPE), for Qwen2 it did not (NeoX RoPE, as transformers)
_INTERLEAVED_KEYS = {"llama": True, "qwen2": False}


def llama_cpp_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


@dataclass(frozen=True)
class _StateLayout:
    """How this llama.cpp build writes one sequence's KV state (read from a state it wrote, at load)."""

    header: bytes  # the bytes before the stream count
    v_trans: bool  # values stored transposed (llama.cpp without flash attention)
    layers: int
    row_bytes: int  # bytes of one token's keys (= values) in one layer, f16


class LlamaCppDecoder:
    """A GGUF file loaded in llama.cpp, handing out contexts that continue torch-prefilled prompts."""

    def __init__(self, gguf: Path, model_type: str, threads: int | None = None) -> None:
        if not llama_cpp_available():
            raise ConfigError(f"decoder 'llama.cpp' needs llama-cpp-python: {INSTALL_HINT}")
        if model_type not in _INTERLEAVED_KEYS:
            known = ", ".join(_INTERLEAVED_KEYS)
            raise ConfigError(f"decoder 'llama.cpp' knows the KV of {known} models, not {model_type!r}")
        self.interleaved_keys = _INTERLEAVED_KEYS[model_type]
        self.gguf = gguf
        import llama_cpp

        self._lib = llama_cpp
        self.threads = threads or torch.get_num_threads()
        _quiet(llama_cpp)
        llama_cpp.llama_backend_init()
        params = llama_cpp.llama_model_default_params()
        params.use_extra_bufts = _repack(llama_cpp)
        self._model = llama_cpp.llama_model_load_from_file(str(gguf).encode(), params)
        if not self._model:
            raise ModelError(f"llama.cpp could not load {gguf}")
        self.vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(self._model))
        self._free: list[_Context] = []
        self._lock = threading.Lock()
        self.layout = self._read_layout()

    def session(self, length: int) -> DecoderSession:
        """A context for one answer of at most ``length`` tokens (prompt included), empty."""
        with self._lock:
            for i, context in enumerate(self._free):
                if context.size >= length:
                    return DecoderSession(self, self._free.pop(i))
        return DecoderSession(self, self._new_context(max(_MIN_CONTEXT, length)))

    def _release(self, context: _Context) -> None:
        self._lib.llama_memory_clear(context.memory, True)
        with self._lock:
            self._free.append(context)

    def _new_context(self, size: int) -> _Context:
        lib = self._lib
        params = lib.llama_context_default_params()
        params.n_ctx = size
        params.n_batch, params.n_ubatch = _BATCH, 64  # a decode step or a draft tree: small micro-batches
        params.n_seq_max = _SEQUENCES
        params.kv_unified = True  # sequences share cells: a draft tree's branches share the prompt
        params.n_threads = params.n_threads_batch = self.threads
        params.no_perf = True
        # flash attention stays at llama.cpp's default (on, on this CPU): with it off, a draft tree's nodes no
        # longer scored as one-token steps (SmolLM2, tests/test_llama_cpp_decoder.py)
        ctx = lib.llama_init_from_model(self._model, params)
        if not ctx:
            raise ModelError(f"llama.cpp could not create a context of {size} tokens")
        return _Context(ctx, lib.llama_get_memory(ctx), size, _Batch(lib, _BATCH))

    def _read_layout(self) -> _StateLayout:
        """Run one token and parse the sequence state llama.cpp writes for it; refuse a layout we can't
        write (a llama.cpp build whose state format changed)."""
        lib = self._lib
        context = self._new_context(_MIN_CONTEXT)
        try:
            context.batch.raw.n_tokens = 0
            context.batch.add(0, 0, [0], False)
            if lib.llama_decode(context.ctx, context.batch.raw) != 0:
                raise ModelError("llama.cpp could not run a token of the model")
            size = lib.llama_state_seq_get_size(context.ctx, 0)
            buffer = (ctypes.c_uint8 * size)()
            raw = bytes(buffer[: lib.llama_state_seq_get_data(context.ctx, buffer, size, 0)])
        finally:
            self._release(context)  # the first session's
        try:
            streams, cells, pos, n_seq, seq, v_trans, layers, k_type, row = struct.unpack_from(
                "<IIiIiIIiQ", raw, 8
            )
        except struct.error as error:
            raise ModelError(f"llama.cpp's sequence state is too short ({len(raw)} bytes)") from error
        layout = _StateLayout(raw[:8], bool(v_trans), layers, row)
        if (streams, cells, pos, n_seq, seq, k_type) != (1, 1, 0, 1, 0, _F16) or len(raw) != len(
            self._state(torch.zeros(layers, 2, 1, row // 2, dtype=torch.float16), layout)
        ):
            raise ModelError(
                "this llama-cpp-python writes its KV state in a layout ragloom does not know; "
                f"use the torch decoder or {INSTALL_HINT}"
            )
        return layout

    @staticmethod
    def _state(kv: torch.Tensor, layout: _StateLayout) -> bytes:
        """The sequence state of ``kv`` ``# [layers, 2, tokens, row]`` (f16 keys and values) at positions
        0..tokens-1 of sequence 0."""
        tokens, width = kv.shape[2], kv.shape[3]
        cells = np.zeros((tokens, 3), dtype=np.int32)  # pos, n_seq_id, seq_id
        cells[:, 0], cells[:, 1] = np.arange(tokens), 1
        parts = [layout.header, struct.pack("<II", 1, tokens), cells.tobytes()]
        parts.append(struct.pack("<II", int(layout.v_trans), layout.layers))
        data = kv.numpy()
        for layer in range(layout.layers):
            parts += [struct.pack("<iQ", _F16, width * 2), data[layer, 0].tobytes()]
        for layer in range(layout.layers):
            if layout.v_trans:
                values = np.ascontiguousarray(data[layer, 1].T)  # [width, tokens]
                parts += [struct.pack("<iII", _F16, 2, width), values.tobytes()]
            else:
                parts += [struct.pack("<iQ", _F16, width * 2), data[layer, 1].tobytes()]
        return b"".join(parts)


@dataclass
class _Context:
    ctx: Any
    memory: Any
    size: int  # tokens
    batch: _Batch  # reused by every forward


class _Batch:
    """A ``llama_batch`` of up to ``capacity`` tokens."""

    def __init__(self, lib: Any, capacity: int) -> None:
        self._lib = lib
        self.raw = lib.llama_batch_init(capacity, 0, _SEQUENCES)
        self.raw.n_tokens = 0

    def add(self, token: int, position: int, sequences: Sequence[int], logits: bool = True) -> None:
        i = self.raw.n_tokens
        self.raw.token[i] = token
        self.raw.pos[i] = position
        self.raw.n_seq_id[i] = len(sequences)
        for j, sequence in enumerate(sequences):
            self.raw.seq_id[i][j] = sequence
        self.raw.logits[i] = logits
        self.raw.n_tokens = i + 1


class DecoderSession:
    """One :class:`KVBatch`'s rows in a llama.cpp context: row ``r`` is sequence ``r * branches``."""

    def __init__(self, decoder: LlamaCppDecoder, context: _Context) -> None:
        self._decoder = decoder
        self._lib = decoder._lib
        self._context: _Context | None = context
        self._rows = 0
        self._branches = 1  # sequences per row
        self._next: list[int] = []  # per row: the position of its next token
        self._pending: list[list[int]] = []  # the last extend's branch of each node (first = primary)
        self._depths: list[int] = []  # the last extend's depth of each node
        self._used = 1  # the last extend's number of branches

    def load(self, rows: Sequence[torch.Tensor], head_dim: int) -> None:
        """The prompt's KV of each row, transformers' layout ``# [layers, 2, tokens, kv_heads * head_dim]``
        (positions 0 on)."""
        self._rows = len(rows)
        self._branches = (_SEQUENCES - 1) // self._rows
        layout = self._decoder.layout
        for row, kv in enumerate(rows):
            kv = kv.detach().to(torch.float16)
            if self._decoder.interleaved_keys:  # (i, i + d/2) -> (2i, 2i + 1) within each head
                layers, _, tokens, width = kv.shape
                keys = kv[:, 0].reshape(layers, tokens, width // head_dim, 2, head_dim // 2)
                kv = torch.stack([keys.transpose(-1, -2).reshape(layers, tokens, width), kv[:, 1]], dim=1)
            state = self._decoder._state(kv.contiguous(), layout)
            data = (ctypes.c_uint8 * len(state)).from_buffer_copy(state)
            if self._lib.llama_state_seq_set_data(self._ctx, data, len(state), row * self._branches) == 0:
                raise ModelError("llama.cpp refused the prompt's KV state")
        self._next = [kv.shape[2] for kv in rows]

    @property
    def _ctx(self) -> Any:
        if self._context is None:
            raise RuntimeError("the decoder session is closed")
        return self._context.ctx

    def extend(self, tokens: Sequence[int], parents: Sequence[int], depths: Sequence[int]) -> torch.Tensor:
        """Run the tree of ``tokens`` on every row; logits after each node ``# [rows, n, vocab]``."""
        n = len(tokens)
        branches = _branches(parents)  # per node: the leaves' branch numbers through it
        used = 1 + max(b[-1] for b in branches)  # branches are numbered 0..used-1
        if used > self._branches:
            raise ConfigError(f"a draft tree of more than {self._branches} branches")
        for row in range(self._rows):
            for branch in range(1, used):
                self._lib.llama_memory_seq_cp(self._memory, self._seq(row, 0), self._seq(row, branch), -1, -1)
        size = self._context.size if self._context else 0
        if max(self._next) + n > size:
            raise ConfigError(f"the answer would pass the decoder's context of {size} tokens")
        if self._rows * n > _BATCH:
            raise ConfigError(f"a forward of {self._rows * n} tokens; the llama.cpp decoder takes {_BATCH}")
        batch = self._context.batch if self._context else None
        assert batch is not None
        batch.raw.n_tokens = 0
        for row in range(self._rows):
            for token, depth, through in zip(tokens, depths, branches, strict=True):
                sequences = [self._seq(row, b) for b in through]
                batch.add(token, self._next[row] + depth, sequences)
        status = self._lib.llama_decode(self._ctx, batch.raw)
        if status == 1:  # no room left: release the parked cells and try once more
            self._lib.llama_memory_seq_rm(self._memory, _PARKED, -1, -1)
            status = self._lib.llama_decode(self._ctx, batch.raw)
        if status != 0:
            raise ModelError(f"llama.cpp failed to decode a batch (status {status})")
        vocab = self._decoder.vocab
        logits = np.ctypeslib.as_array(self._lib.llama_get_logits(self._ctx), shape=(self._rows * n, vocab))
        self._pending, self._depths, self._used = branches, list(depths), used
        return torch.from_numpy(logits.copy()).view(self._rows, n, vocab)

    def keep(self, nodes: Sequence[int]) -> None:
        """Keep the cells of ``nodes`` (a root-to-node path of the last extend) in each row's sequence."""
        kept, n, used = len(nodes), len(self._pending), self._used
        if kept == n and used == 1:  # a chain kept whole (every plain step): nothing to move or free
            self._next = [start + kept for start in self._next]
            self._pending = []
            return
        branch = self._pending[nodes[-1]][0] if nodes else 0  # a branch through the whole path
        last = (self._rows - 1) * n + (nodes[-1] if nodes else -1)  # the batch index of the last kept cell
        on_path = set(nodes)
        rejected = [i for i in range(n) if i not in on_path]
        for row in range(self._rows):
            start = self._next[row]
            for node in rejected:  # park the rejected cells that lie before a kept one
                if row * n + node < last:
                    position = start + self._depths[node]
                    source = self._seq(row, self._pending[node][0])  # its only cell at this position
                    self._lib.llama_memory_seq_cp(self._memory, source, _PARKED, position, position + 1)
        for row in range(self._rows):
            start = self._next[row]
            main = self._seq(row, 0)
            if branch == 0:
                self._lib.llama_memory_seq_rm(self._memory, main, start + kept, -1)
            else:
                self._lib.llama_memory_seq_rm(self._memory, main, start, -1)
                self._lib.llama_memory_seq_cp(self._memory, self._seq(row, branch), main, start, start + kept)
            for other in range(1, used):
                self._lib.llama_memory_seq_rm(self._memory, self._seq(row, other), -1, -1)
            self._next[row] = start + kept
        self._pending = []

    def close(self) -> None:
        if self._context is not None:
            self._decoder._release(self._context)
            self._context = None

    @property
    def _memory(self) -> Any:
        assert self._context is not None
        return self._context.memory

    def _seq(self, row: int, branch: int) -> int:
        return row * self._branches + branch

    def __del__(self) -> None:
        self.close()


def _repack(lib: Any) -> bool:
    """Whether llama.cpp may repack the weights for its own kernels (1.4x faster decoding of the 1.5B's
    Q4_K tensors here): yes, unless the build has AMX, whose repacked path crashed at the first decode
    (ggml-org/llama.cpp#20824; ``make bench`` builds without it)."""
    import os

    if os.environ.get("RAG_LLAMA_CPP_REPACK") in ("0", "1"):
        return os.environ["RAG_LLAMA_CPP_REPACK"] == "1"
    return "AMX" not in lib.llama_print_system_info().decode()


_NO_LOG: Any = None  # the log callback, kept alive


def _quiet(lib: Any) -> None:
    """Send llama.cpp's log lines nowhere (it writes every load and context to stderr)."""
    global _NO_LOG
    if _NO_LOG is None:
        _NO_LOG = lib.llama_log_callback(lambda level, text, data: None)
        lib.llama_log_set(_NO_LOG, ctypes.c_void_p(0))


def _branches(parents: Sequence[int]) -> list[list[int]]:
    """For each node of a tree, the numbers of the root-to-leaf branches through it, ascending: branch ``b``
    ends at the ``b``-th leaf. A node's first branch holds all its ancestors, as llama.cpp's mask needs.

    >>> _branches([-1, 0, 0, 1])  # root, two children, a grandchild under node 1: leaves 2 and 3
    [[0, 1], [1], [0], [1]]
    """
    n = len(parents)
    children = [0] * n
    for parent in parents:
        if parent >= 0:
            children[parent] += 1
    leaves = [i for i in range(n) if children[i] == 0]
    through: list[list[int]] = [[] for _ in range(n)]
    for branch, leaf in enumerate(leaves):
        node = leaf
        while node >= 0:
            through[node].append(branch)
            node = parents[node]
    return [sorted(b) for b in through]
