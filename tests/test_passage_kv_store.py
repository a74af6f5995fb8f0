"""The passage-KV store: keys, the memory LRU, the disk tier, torn and corrupt files, concurrent writers."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from rag.errors import ConfigError
from rag.generation.contexts.passage_kv_store import PassageKey, PassageKV, PassageKVStore


def block(seed: int, tokens: int = 4, layers: int = 2) -> PassageKV:
    """A block of ``layers`` layers, 2 heads, ``tokens`` tokens, head dim 8: 2·layers·64·tokens bytes."""
    g = torch.Generator().manual_seed(seed)
    keys = tuple(torch.randn(2, tokens, 8, generator=g) for _ in range(layers))
    values = tuple(torch.randn(2, tokens, 8, generator=g) for _ in range(layers))
    return PassageKV(keys, values)


def same(a: PassageKV, b: PassageKV) -> bool:
    pairs = zip((*a.keys, *a.values), (*b.keys, *b.values), strict=True)
    return len(a.keys) == len(b.keys) and all(torch.equal(x, y) for x, y in pairs)


def key(passage: str, model: str = "m", prefix: str = "p") -> PassageKey:
    return PassageKey.of(model, prefix, passage)


def test_key_changes_with_model_prefix_and_passage() -> None:
    base = key("passage")
    assert key("passage") == base
    variants = [key("passage", model="m2"), key("passage", prefix="p2"), key("passage2")]
    digests = {base.digest, *(v.digest for v in variants)}
    assert len(digests) == 4
    store = PassageKVStore()
    store.put(base, block(0))
    assert store.get(base)[1] == "memory"
    assert all(store.get(v) == (None, None) for v in variants)


def test_block_validates_shapes_and_counts_bytes() -> None:
    b = block(0, tokens=5, layers=3)
    assert b.tokens == 5 and b.nbytes == 2 * 3 * (2 * 5 * 8) * 4
    with pytest.raises(ValueError):
        PassageKV((torch.zeros(2, 3, 8),), (torch.zeros(2, 4, 8),))
    with pytest.raises(ConfigError):
        PassageKVStore(memory_bytes=-1)


def test_memory_lru_evicts_the_least_recently_used_by_size() -> None:
    size = block(0).nbytes  # 1024 bytes
    store = PassageKVStore(memory_bytes=3 * size)
    for i in range(3):
        store.put(key(str(i)), block(i))
    assert store.memory_used == 3 * size
    store.get(key("0"))  # 0 is now the most recently used; 1 the least
    store.put(key("3"), block(3))
    assert store.memory_used == 3 * size
    assert store.get(key("1")) == (None, None)
    for i in (0, 2, 3):
        found, source = store.get(key(str(i)))
        assert source == "memory" and same(found, block(i))
    store.put(key("big"), block(9, tokens=40))  # larger than the whole tier: not kept in memory
    assert store.get(key("big")) == (None, None) and store.memory_used == 3 * size


def test_disk_persists_across_store_instances(tmp_path: Path) -> None:
    PassageKVStore(directory=tmp_path).put(key("a"), block(1))
    fresh = PassageKVStore(directory=tmp_path)
    found, source = fresh.get(key("a"))
    assert source == "disk" and same(found, block(1))
    assert fresh.get(key("a"))[1] == "memory"  # a disk hit is remembered
    assert PassageKVStore(directory=tmp_path).get(key("b")) == (None, None)
    assert [p.name for p in tmp_path.iterdir()] == [fresh.path(key("a")).name]  # no temporary files left


def test_disk_evicts_least_recently_used_files_by_size(tmp_path: Path) -> None:
    store = PassageKVStore(directory=tmp_path)
    store.put(key("probe"), block(0))
    file_size = store.path(key("probe")).stat().st_size
    store.path(key("probe")).unlink()
    store = PassageKVStore(memory_bytes=0, directory=tmp_path, disk_bytes=2 * file_size)
    store.put(key("0"), block(0))
    store.put(key("1"), block(1))
    os.utime(store.path(key("0")), (1, 1))  # 0 was used long ago
    store.put(key("2"), block(2))
    assert not store.path(key("0")).exists()
    assert store.path(key("1")).exists() and store.path(key("2")).exists()


@pytest.mark.parametrize("damage", ["truncate", "garbage", "other_key"])
def test_a_damaged_file_is_discarded_and_recomputed(tmp_path: Path, damage: str) -> None:
    store = PassageKVStore(memory_bytes=0, directory=tmp_path)
    store.put(key("a"), block(1))
    path = store.path(key("a"))
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x00not a safetensors file" * 10)
    else:  # a complete file, but written for another key
        store.put(key("b"), block(2))
        path.write_bytes(store.path(key("b")).read_bytes())
    assert store.get(key("a")) == (None, None)
    assert not path.exists()  # dropped, so the next reader does not trip on it
    store.put(key("a"), block(1))  # the caller recomputes and stores it again
    found, source = PassageKVStore(directory=tmp_path).get(key("a"))
    assert source == "disk" and same(found, block(1))


_WRITER = textwrap.dedent(
    """
    import sys, torch
    from rag.generation.contexts.passage_kv_store import PassageKey, PassageKV, PassageKVStore
    directory, seed = sys.argv[1], int(sys.argv[2])
    g = torch.Generator().manual_seed(seed)
    block = PassageKV(tuple(torch.randn(4, 256, 64, generator=g) for _ in range(4)),
                      tuple(torch.randn(4, 256, 64, generator=g) for _ in range(4)))
    store = PassageKVStore(memory_bytes=0, directory=directory)
    for _ in range(30):
        store.put(PassageKey.of("m", "p", "shared"), block)
    """
)


def test_concurrent_writers_of_one_key_leave_a_loadable_file(tmp_path: Path) -> None:
    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    # cwd: not the checkout, whose kernels/ would shadow the PyPI kernels that transformers imports
    writers = [
        subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path), str(seed)], env=env, cwd=tmp_path)
        for seed in (1, 2)
    ]
    reader = PassageKVStore(memory_bytes=0, directory=tmp_path)
    loads = misses_after_first_load = 0
    while any(w.poll() is None for w in writers):
        found, _ = reader.get(PassageKey.of("m", "p", "shared"))
        loads += found is not None
        misses_after_first_load += loads > 0 and found is None  # a torn file would be a miss (and deleted)
        time.sleep(0.005)
    assert misses_after_first_load == 0
    assert [w.wait() for w in writers] == [0, 0]
    found, source = reader.get(PassageKey.of("m", "p", "shared"))
    assert source == "disk" and found.tokens == 256 and len(found.keys) == 4
    expected = []
    for seed in (1, 2):
        g = torch.Generator().manual_seed(seed)
        expected.append(torch.randn(4, 256, 64, generator=g))
    assert any(torch.equal(found.keys[0], e) for e in expected)  # one writer's complete block
    assert [p.name for p in tmp_path.iterdir()] == [reader.path(PassageKey.of("m", "p", "shared")).name]


def test_int8_blocks_are_about_a_quarter_of_the_size_and_round_trip_through_disk(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(3)
    original = PassageKV((torch.randn(2, 16, 64, generator=g),), (torch.randn(2, 16, 64, generator=g),))
    small = original.quantized()
    assert small.is_int8 and small.keys[0].dtype == torch.int8
    assert small.nbytes < original.nbytes * 0.3  # int8 values plus one float scale per channel or token
    restored = small.dequantized()
    for x, y, scale in zip(original.keys, restored.keys, small.key_scales, strict=True):
        assert (x - y).abs().le(scale / 2 + 1e-7).all()  # at most half a quantisation step per element
    PassageKVStore(directory=tmp_path).put(key("q"), small)
    found, source = PassageKVStore(directory=tmp_path).get(key("q"))
    assert source == "disk" and found.is_int8 and same(found, small)
    assert all(torch.equal(a, b) for a, b in zip(found.value_scales, small.value_scales, strict=True))
    with pytest.raises(ValueError):
        PassageKV.from_tensors({"k.0": torch.zeros(1, 1, 1)})
