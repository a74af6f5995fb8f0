"""The on-disk form of a quantized model: its int4/int8 tensors as kept in memory, loaded in a second.

One folder per bundled model, weight scheme and layout,
``<cache>/models/<name>-<sha256 prefix>-<scheme>-v<layout>/`` (a folder of an older layout is removed when
the new one is written), holding
the config, the tokenizer and ``weights.safetensors``: for a weight ``W``, ``W:q4``/``W:scale``/``W:zero``
(:class:`~rag.lm.quantized_weight.Int4Weight`) or ``W:q8``/``W:scale`` (int8 rows), and norms and biases by
their own names. It is written atomically (temp folder, then rename) under a file lock, as the float cache.
The 0.5B's mixed folder is 0.6 GB (float32: 2.4 GB), the 1.5B's 1.5 GB (float32: 6.7 GB).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from rag.errors import ModelError
from rag.lm.gguf_weights import GGUFModel, LowBits, read_gguf
from rag.lm.quantized_model import layer_roles, skeleton
from rag.lm.quantized_weight import GROUP_SIZE, Int4Weight, Int8Weight, QuantizedWeight
from rag.models.bundled import gguf_file
from rag.models.catalog import BundledModel
from rag.settings import cache_dir

logger = logging.getLogger(__name__)

FORMAT = "ragloom-quantized/1"
LAYOUT = 2  # which tensors take which form; 2: the output layer as int8 rows in "mixed" (it was int4)
_WEIGHTS = "weights.safetensors"
_MARKER = "ragloom-source.json"


def quantized_dir(model: BundledModel, scheme: str) -> Path:
    return cache_dir() / "models" / f"{model.name}-{model.sha256[:12]}-{scheme}-v{LAYOUT}"


def ensure_gguf(model: BundledModel) -> Path:
    """Bundled ``model``'s GGUF file on disk: in place when it ships whole, else assembled (and verified)
    once into the model cache."""
    if len(model.files) == 1:
        return gguf_file(model, cache_dir())
    target = cache_dir() / "models" / f"{model.name}-{model.sha256[:12]}.gguf"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        os.replace(gguf_file(model, work), target)  # verified as it was assembled
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def ensure_quantized(model: BundledModel, scheme: str, low_bits: LowBits) -> Path:
    """The quantized folder of bundled GGUF ``model`` for ``scheme`` (a precision name, e.g. "mixed", whose
    non-4-bit linear weights become ``low_bits``), writing it first if needed."""
    target = quantized_dir(model, scheme)
    if (target / _MARKER).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / _MARKER).is_file():  # another process may have finished while we waited
            _write(model, low_bits, target)
    return target


def _write(model: BundledModel, low_bits: LowBits, target: Path) -> None:
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    logger.warning("repacking %s's GGUF weights into a cache at %s (once)", model.name, target)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        gguf = gguf_file(model, work)
        config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        meta = skeleton(config, "sdpa")
        linear, embedding, head = layer_roles(meta)
        read = read_gguf(
            gguf, meta, linear_names=linear, embedding_names=embedding, output_names=head, low_bits=low_bits
        )
        out = work / "model"
        out.mkdir()
        config.save_pretrained(out)
        GenerationConfig.from_model_config(config).save_pretrained(out)
        AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out)
        save_weights(out / _WEIGHTS, read, low_bits)
        marker = {"name": model.name, "sha256": model.sha256, "format": FORMAT, "low_bits": low_bits}
        (out / _MARKER).write_text(json.dumps(marker, indent=2))
        if target.exists():  # a stale, unmarked folder from an interrupted run
            shutil.rmtree(target)
        out.rename(target)
        for older in target.parent.glob(target.name.removesuffix(f"-v{LAYOUT}") + "*"):
            if older != target and older.is_dir():  # an older layout of the same scheme
                shutil.rmtree(older, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def save_weights(path: Path, model: GGUFModel, low_bits: str) -> None:
    from safetensors.numpy import save_file

    tensors: dict[str, np.ndarray] = dict(model.floats)
    for name, weight in model.weights.items():
        if isinstance(weight, Int4Weight):
            tensors |= {f"{name}:q4": weight.q, f"{name}:scale": weight.scale, f"{name}:zero": weight.zero}
        else:
            tensors |= {f"{name}:q8": weight.q, f"{name}:scale": weight.scale}
    metadata = {
        "format": FORMAT,
        "group_size": str(GROUP_SIZE),
        "low_bits": low_bits,
        "architecture": model.architecture,
        "source_types": json.dumps(model.source_types),
    }
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path), metadata=metadata)


def load_weights(folder: Path) -> tuple[dict[str, QuantizedWeight], dict[str, np.ndarray]]:
    """``(weights, floats)`` of a quantized folder, as :func:`rag.lm.quantized_model.materialize` takes.

    Each tensor is a copy-on-write memory map of its bytes in ``weights.safetensors`` (never written, so the
    int8 weights stay the file's pages: resident once, no copy; the int4 ones are unmapped once packed).
    """
    path = folder / _WEIGHTS
    try:
        metadata, tensors = _mapped_safetensors(path)
    except (OSError, ValueError, KeyError) as error:  # a missing, truncated or damaged file
        raise ModelError(f"cannot read the quantized model at {path}: {error}") from error
    if metadata.get("format") != FORMAT:
        raise ModelError(f"{path} is not a {FORMAT} file (format {metadata.get('format')!r})")
    group = int(metadata["group_size"])
    weights: dict[str, QuantizedWeight] = {}
    floats: dict[str, np.ndarray] = {}
    for key, value in tensors.items():
        name, _, part = key.partition(":")
        if not part:
            floats[name] = value
        elif part == "q4":
            weights[name] = Int4Weight(value, tensors[f"{name}:scale"], tensors[f"{name}:zero"], group)
        elif part == "q8":
            weights[name] = Int8Weight(value, tensors[f"{name}:scale"])
    return weights, floats


_DTYPES = {"F32": np.float32, "I8": np.int8, "U8": np.uint8, "I32": np.int32, "F16": np.float16}


def _mapped_safetensors(path: Path) -> tuple[dict[str, str], dict[str, np.ndarray]]:
    """The metadata and the tensors of a safetensors file, each tensor memory-mapped where it lies.

    The format: an 8-byte little-endian header length, a JSON header naming each tensor's dtype, shape and
    byte range after the header, then the bytes.
    """
    size = path.stat().st_size
    with path.open("rb") as f:
        length = int.from_bytes(f.read(8), "little")
        if not 0 < length <= size - 8:
            raise ValueError(f"header length {length} does not fit a {size}-byte file")
        header = json.loads(f.read(length))
    metadata = header.pop("__metadata__", {})
    base = 8 + length
    tensors = {}
    for name, info in header.items():
        start, end = info["data_offsets"]
        dtype = np.dtype(_DTYPES[info["dtype"]])
        shape = tuple(info["shape"])
        if end - start != int(np.prod(shape)) * dtype.itemsize or base + end > size:
            raise ValueError(f"tensor {name} does not fit its bytes")
        if end == start:
            tensors[name] = np.zeros(shape, dtype)
        else:
            tensors[name] = np.memmap(path, dtype=dtype, mode="c", offset=base + start, shape=shape)
    return metadata, tensors
