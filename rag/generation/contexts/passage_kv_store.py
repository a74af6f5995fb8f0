"""Per-passage KV blocks kept across requests: an in-memory LRU over an optional on-disk directory.

A block holds every layer's keys (after RoPE) and values for one passage's tokens, encoded right after
a shared prefix. It is valid only for the same model, the same prefix and the same passage text, so the
key is the triple of their hashes. The memory tier is an LRU bounded in bytes; the disk tier is a directory of
safetensors files bounded in bytes (least recently used files are deleted first).

Disk writes go to a temporary file in the same directory and are moved into place with ``os.replace``, so a
reader sees the old file, the new one or none, never a torn one; two processes writing the same key both
rename a complete file and the last one wins. A file that fails to load (truncated, corrupt, written for
another key) is deleted and reported as a miss, so the caller recomputes it.

>>> import torch
>>> store = PassageKVStore(memory_bytes=1 << 20)
>>> key = PassageKey.of("model-a", "prefix text", "passage text")
>>> block = PassageKV((torch.ones(2, 3, 4),), (torch.zeros(2, 3, 4),))  # 1 layer, 2 heads, 3 tokens, dim 4
>>> store.put(key, block)
>>> store.get(key)[1], store.get(PassageKey.of("model-b", "prefix text", "passage text"))
('memory', (None, None))
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from rag.errors import ConfigError
from rag.generation.contexts import kv_int8

_SUFFIX = ".safetensors"
_TMP_PREFIX = ".tmp-"
_STALE_TMP_S = 600.0  # temporary files older than this were left by a crashed writer
_FORMAT = "1"


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class PassageKey:
    """Hashes of what a block depends on: the model, the prefix it was encoded after, and the passage."""

    model: str
    prefix: str
    passage: str

    @classmethod
    def of(cls, model_id: str, prefix_text: str, passage_text: str) -> PassageKey:
        return cls(_sha256(model_id), _sha256(prefix_text), _sha256(passage_text))

    @property
    def digest(self) -> str:
        return _sha256(f"{self.model}:{self.prefix}:{self.passage}")


@dataclass(frozen=True)
class PassageKV:
    """One block: per layer, keys and values ``# [kv_heads, tokens, head_dim]`` (no batch dimension).

    An int8 block (:meth:`quantized`) also holds the scales of :mod:`rag.generation.contexts.kv_int8`;
    :meth:`dequantized` gives the float block the model attends over.
    """

    keys: tuple[torch.Tensor, ...]
    values: tuple[torch.Tensor, ...]
    key_scales: tuple[torch.Tensor, ...] | None = None  # each [kv_heads, 1, head_dim] for an int8 block
    value_scales: tuple[torch.Tensor, ...] | None = None  # each [kv_heads, tokens, 1]

    def __post_init__(self) -> None:
        if not self.keys or len(self.keys) != len(self.values):
            raise ValueError(f"got {len(self.keys)} key and {len(self.values)} value layers")
        tokens = self.keys[0].shape[1]
        for k, v in zip(self.keys, self.values, strict=True):
            if k.dim() != 3 or v.dim() != 3 or k.shape[1] != tokens or v.shape[1] != tokens:
                raise ValueError(
                    f"layer shapes {tuple(k.shape)}, {tuple(v.shape)} are not [heads, {tokens}, dim]"
                )
        if (self.key_scales is None) != (self.value_scales is None):
            raise ValueError("an int8 block needs both key and value scales")

    @property
    def tokens(self) -> int:
        return self.keys[0].shape[1]

    @property
    def is_int8(self) -> bool:
        return self.key_scales is not None

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.to_tensors().values())

    def quantized(self) -> PassageKV:
        keys = [kv_int8.quantize(k, kv_int8.KEY_DIM) for k in self.keys]
        values = [kv_int8.quantize(v, kv_int8.VALUE_DIM) for v in self.values]
        return PassageKV(
            tuple(q for q, _ in keys),
            tuple(q for q, _ in values),
            tuple(s for _, s in keys),
            tuple(s for _, s in values),
        )

    def dequantized(self, dtype: torch.dtype = torch.float32) -> PassageKV:
        if self.key_scales is None or self.value_scales is None:
            return self
        return PassageKV(
            tuple(kv_int8.dequantize(q, s, dtype) for q, s in zip(self.keys, self.key_scales, strict=True)),
            tuple(
                kv_int8.dequantize(q, s, dtype) for q, s in zip(self.values, self.value_scales, strict=True)
            ),
        )

    def to(self, device: torch.device | str) -> PassageKV:
        """The block on ``device`` (a disk hit is loaded on the CPU)."""
        if self.keys[0].device == torch.device(device):
            return self
        tensors = {name: t.to(device) for name, t in self.to_tensors().items()}
        return PassageKV.from_tensors(tensors)

    def to_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {f"k.{i}": k.contiguous() for i, k in enumerate(self.keys)}
        tensors.update({f"v.{i}": v.contiguous() for i, v in enumerate(self.values)})
        if self.key_scales is not None and self.value_scales is not None:
            tensors.update({f"ks.{i}": s.contiguous() for i, s in enumerate(self.key_scales)})
            tensors.update({f"vs.{i}": s.contiguous() for i, s in enumerate(self.value_scales)})
        return tensors

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> PassageKV:
        layers = sum(name.startswith("k.") for name in tensors)
        names = [f"{kind}.{i}" for kind in ("k", "v") for i in range(layers)]
        int8 = "ks.0" in tensors
        if int8:
            names += [f"{kind}.{i}" for kind in ("ks", "vs") for i in range(layers)]
        if not layers or sorted(names) != sorted(tensors):
            raise ValueError("not a passage KV block")

        def group(kind: str) -> tuple[torch.Tensor, ...]:
            return tuple(tensors[f"{kind}.{i}"] for i in range(layers))

        return cls(group("k"), group("v"), *((group("ks"), group("vs")) if int8 else ()))


class PassageKVStore:
    """LRU of :class:`PassageKV` blocks in memory, optionally backed by a directory.

    ``get`` returns the block and where it came from (``"memory"`` or ``"disk"``); a disk hit is also put in
    memory. ``put`` stores in memory and, with a directory, on disk. Thread-safe; several processes may share
    one directory.
    """

    def __init__(
        self, memory_bytes: int = 512 << 20, directory: str | Path | None = None, disk_bytes: int = 4 << 30
    ) -> None:
        if memory_bytes < 0 or disk_bytes < 0:
            raise ConfigError(f"store size limits must be >= 0, got {memory_bytes} and {disk_bytes}")
        self.memory_bytes = memory_bytes
        self.disk_bytes = disk_bytes
        self.directory = Path(directory) if directory is not None else None
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
        self._memory: OrderedDict[PassageKey, PassageKV] = OrderedDict()
        self._memory_used = 0
        self._lock = threading.Lock()

    # -- public API ---------------------------------------------------------------------------------

    def get(self, key: PassageKey) -> tuple[PassageKV | None, str | None]:
        with self._lock:
            block = self._memory.get(key)
            if block is not None:
                self._memory.move_to_end(key)
                return block, "memory"
        block = self._load(key)
        if block is None:
            return None, None
        self._remember(key, block)
        return block, "disk"

    def put(self, key: PassageKey, block: PassageKV) -> None:
        self._remember(key, block)
        if self.directory is not None:
            self._save(key, block)

    def clear_memory(self) -> None:
        with self._lock:
            self._memory.clear()
            self._memory_used = 0

    def __contains__(self, key: PassageKey) -> bool:
        with self._lock:
            if key in self._memory:
                return True
        return self.directory is not None and self.path(key).exists()

    @property
    def memory_used(self) -> int:
        return self._memory_used

    def path(self, key: PassageKey) -> Path:
        if self.directory is None:
            raise ConfigError("this passage KV store has no directory")
        return self.directory / f"{key.digest}{_SUFFIX}"

    # -- memory tier --------------------------------------------------------------------------------

    def _remember(self, key: PassageKey, block: PassageKV) -> None:
        size = block.nbytes
        with self._lock:
            old = self._memory.pop(key, None)
            if old is not None:
                self._memory_used -= old.nbytes
            if size > self.memory_bytes:
                return  # larger than the whole tier: disk only
            self._memory[key] = block
            self._memory_used += size
            while self._memory_used > self.memory_bytes:
                _, evicted = self._memory.popitem(last=False)  # least recently used first
                self._memory_used -= evicted.nbytes

    # -- disk tier ----------------------------------------------------------------------------------

    def _load(self, key: PassageKey) -> PassageKV | None:
        if self.directory is None:
            return None
        path = self.path(key)
        try:
            with safe_open(path, framework="pt") as f:
                metadata = f.metadata() or {}
                tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 - not a dict
            if metadata.get("key") != key.digest or metadata.get("format") != _FORMAT:
                raise ValueError("the file belongs to another key or format")
            block = PassageKV.from_tensors(tensors)
        except FileNotFoundError:
            return None
        except (SafetensorError, ValueError, OSError, KeyError, RuntimeError):
            path.unlink(missing_ok=True)  # torn or corrupt: drop it, the caller recomputes
            return None
        # Last use, for least-recently-used eviction; another process may have evicted it meanwhile.
        with contextlib.suppress(FileNotFoundError):
            os.utime(path)
        return block

    def _save(self, key: PassageKey, block: PassageKV) -> None:
        assert self.directory is not None
        fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, suffix=_SUFFIX, dir=self.directory)
        os.close(fd)
        try:
            tensors = {name: t.detach().cpu() for name, t in block.to_tensors().items()}
            save_file(tensors, tmp, metadata={"key": key.digest, "format": _FORMAT})
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, self.path(key))  # atomic: readers never see a partial file
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        self._evict_disk()

    def _evict_disk(self) -> None:
        """Delete least recently used files until the directory fits ``disk_bytes``."""
        assert self.directory is not None
        files: list[tuple[float, int, Path]] = []
        now = time.time()
        for entry in os.scandir(self.directory):
            try:
                stat = entry.stat()
            except FileNotFoundError:
                continue
            if entry.name.startswith(_TMP_PREFIX):
                if now - stat.st_mtime > _STALE_TMP_S:
                    Path(entry.path).unlink(missing_ok=True)
                continue
            if entry.name.endswith(_SUFFIX):
                files.append((stat.st_mtime, stat.st_size, Path(entry.path)))
        total = sum(size for _, size, _ in files)
        for _, size, path in sorted(files):
            if total <= self.disk_bytes:
                break
            path.unlink(missing_ok=True)
            total -= size
