"""A GGUF file's tensors as the parameters of a transformers model, each in the form the runtime keeps.

transformers names the parameters and knows how llama.cpp's converter reordered them
(``get_gguf_hf_weights_map`` and the per-architecture tensor processors of
``transformers.modeling_gguf_pytorch_utils``); this module reads the raw blocks itself so that 4-bit tensors
stay 4-bit:

- Q4_K, Q4_0 and Q4_1 weights of linear layers repack exactly into int4 groups (rag.lm.quantized_weight);
- other weights of linear layers and the output layer (Q5_0, Q6_K, Q8_0, ...) become int8 rows, or int4
  groups with ``low_bits="int4"`` (Q5_0 then loses its fifth bit, Q6_K two; an int4 output layer alone cost
  the 0.5B 3 EM points on XQuAD, docs/design/2026-12-07-output-layer-precision.md);
- the token embeddings are int8 rows (they are looked up a row at a time);
- one-dimensional tensors (norms, biases) are float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from rag.errors import ModelError
from rag.lm.quantized_weight import (
    QuantizedWeight,
    int4_from_float,
    int4_from_q4_0,
    int4_from_q4_1,
    int4_from_q4_k,
    int8_from_float,
)

LowBits = Literal["int8", "int4"]  # what non-4-bit quantized weights of linear layers become

_EXACT_INT4 = {"Q4_K": int4_from_q4_k, "Q4_0": int4_from_q4_0, "Q4_1": int4_from_q4_1}


@dataclass(frozen=True)
class GGUFModel:
    """What a GGUF file holds for ``from_config``: the architecture and each parameter, by its HF name."""

    architecture: str
    weights: dict[str, QuantizedWeight]  # linear weights and embeddings
    floats: dict[str, np.ndarray]  # everything else (norms, biases), float32
    source_types: dict[str, str]  # HF name -> GGUF tensor type (e.g. "Q4_K"), for the record


def read_gguf(
    path: Path,
    skeleton: Any,
    *,
    linear_names: set[str],
    embedding_names: set[str],
    output_names: set[str],
    low_bits: LowBits = "int8",
) -> GGUFModel:
    """Read ``path`` into the parameters of ``skeleton`` (a transformers model, e.g. on the meta device).

    ``linear_names``, ``embedding_names`` and ``output_names`` are the HF names of the weights of linear
    layers, token embeddings and the output layer; they decide each tensor's form (see the module doc).
    """
    import gguf
    from gguf.quants import dequantize
    from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, get_gguf_hf_weights_map

    reader = gguf.GGUFReader(str(path))
    architecture = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    processor_class = TENSOR_PROCESSORS.get(architecture)
    if processor_class is not None and processor_class.__name__ != "LlamaTensorProcessor":
        raise ModelError(
            f"quantized loading does not handle {architecture!r} GGUF files yet; load with precision='exact'"
        )
    config = skeleton.config
    processor = (processor_class or TENSOR_PROCESSORS.get("llama"))(
        config={
            "num_attention_heads": config.num_attention_heads,
            "num_key_value_heads": config.num_key_value_heads,
        }
    )
    names = get_gguf_hf_weights_map(skeleton, processor)
    reorders = processor_class is not None  # llama's converter permuted the q and k rows for its RoPE
    weights: dict[str, QuantizedWeight] = {}
    floats: dict[str, np.ndarray] = {}
    types: dict[str, str] = {}
    for tensor in reader.tensors:
        hf_name = names.get(tensor.name)
        if hf_name is None:
            continue
        kind = tensor.tensor_type.name
        types[hf_name] = kind
        cols = int(tensor.shape[0])
        rows = int(np.prod(tensor.shape[1:])) if len(tensor.shape) > 1 else 1
        raw = np.asarray(tensor.data)
        if hf_name not in linear_names | embedding_names | output_names:
            floats[hf_name] = dequantize(raw, tensor.tensor_type).astype(np.float32).reshape(-1)
            continue
        order = _row_order(processor, tensor.name, rows) if reorders else None
        exact = _EXACT_INT4.get(kind)
        weight: QuantizedWeight
        if hf_name in linear_names and exact is not None and _int4_fits(rows, cols):
            weight = exact(raw, rows, cols)
        else:
            dense = dequantize(raw, tensor.tensor_type).astype(np.float32).reshape(rows, cols)
            as_int4 = low_bits == "int4" and hf_name not in embedding_names and _int4_fits(rows, cols)
            weight = int4_from_float(dense) if as_int4 else int8_from_float(dense)
        weights[hf_name] = weight if order is None else weight.take_rows(order)
    missing = (linear_names | embedding_names | output_names) - set(weights)
    tied = missing & output_names
    if missing - tied:
        raise ModelError(f"{path.name} lacks tensors for {sorted(missing - tied)[:3]}")
    return GGUFModel(architecture, weights, floats, types)


def _int4_fits(rows: int, cols: int) -> bool:
    from rag.lm.quantized_linear import int4_supported

    return int4_supported(rows, cols, 32)


def _row_order(processor: Any, gguf_name: str, rows: int) -> np.ndarray | None:
    """The permutation the tensor processor applies to this tensor's rows, or None if it applies none."""
    index = np.arange(rows, dtype=np.float64)[:, None]
    moved = processor.process(weights=index, name=gguf_name).weights[:, 0].astype(np.int64)
    return None if np.array_equal(moved, index[:, 0]) else moved
