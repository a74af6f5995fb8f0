"""A transformers causal LM whose linear layers and embeddings hold int4/int8 weights.

The model is built on the meta device from its config, so no float copy of its weights is ever made: its
linear layers become :class:`~rag.lm.quantized_linear.QuantizedLinear` and its token embeddings a
:class:`~rag.lm.quantized_linear.QuantizedEmbedding` from the stored tensors, the remaining parameters
(norms) are filled in the activations' dtype (bf16, or float32 on a CPU without bf16 units:
:attr:`rag.lm.policy.RuntimePolicy.activation_dtype`) and the rotary tables are recomputed. Everything else
(attention, the KV cache, ``generate``) is transformers' own code.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from rag.errors import ModelError
from rag.lm.quantized_linear import QuantizedEmbedding, QuantizedLinear
from rag.lm.quantized_weight import Int8Weight, QuantizedWeight


def layer_roles(model: Any) -> tuple[set[str], set[str], set[str]]:
    """HF names of the weights of ``model``'s linear layers (output layer excluded), token embeddings and
    output layer."""
    output = model.get_output_embeddings()
    embeddings = model.get_input_embeddings()
    linear, embedding, head = set(), set(), set()
    for name, module in model.named_modules():
        if module is output:
            head.add(f"{name}.weight")
        elif module is embeddings:
            embedding.add(f"{name}.weight")
        elif isinstance(module, torch.nn.Linear):
            linear.add(f"{name}.weight")
    return linear, embedding, head


def skeleton(config: Any, attn_implementation: str, dtype: torch.dtype = torch.bfloat16) -> Any:
    """``config``'s causal LM with every tensor on the meta device (no memory, no initialisation), its
    activations in ``dtype``."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn_implementation)


def materialize(model: Any, weights: dict[str, QuantizedWeight], floats: dict[str, np.ndarray]) -> Any:
    """Fill the meta ``model`` in place from ``weights`` and ``floats`` (HF names), in the skeleton's
    activation dtype; returns it in eval mode.

    A linear layer's bias (``floats[name + '.bias']``) goes into its :class:`QuantizedLinear`. An output layer
    without a tensor of its own shares the embeddings' (tied weights, e.g. SmolLM2).
    """
    linear, embedding, head = layer_roles(model)
    dtype = model.dtype
    model.to_empty(device="cpu")  # placeholders: allocated, never written, so never resident
    floats = dict(floats)
    for name in sorted(linear | embedding | head):
        module_name = name.removesuffix(".weight")
        weight = weights.get(name)
        if weight is None and name in head:
            weight = weights[next(iter(embedding))]  # tied to the embeddings
        if weight is None:
            raise ModelError(f"no weight for {name}")
        if name in embedding:
            if not isinstance(weight, Int8Weight):
                raise ModelError(f"{name}: embeddings are kept as int8 rows")
            module: torch.nn.Module = QuantizedEmbedding(weight, dtype)
        else:
            module = QuantizedLinear(weight, floats.pop(f"{module_name}.bias", None), dtype)
        model.set_submodule(module_name, module)
    assigned = set()
    for name, parameter in model.named_parameters():
        value = floats.pop(name, None)
        if value is None:
            raise ModelError(f"no tensor for parameter {name}")
        parameter.data = torch.from_numpy(value).reshape(parameter.shape).to(dtype)
        assigned.add(name)
    if floats:
        raise ModelError(f"tensors with no parameter to fill: {sorted(floats)[:3]}")
    _recompute_rotary_tables(model)
    return model.eval().requires_grad_(False)


def _recompute_rotary_tables(model: Any) -> None:
    """Rebuild the modules whose non-persistent buffers (RoPE frequencies) are computed at construction."""
    for name, module in list(model.named_modules()):
        persistent = set(module.state_dict(keep_vars=True))
        transient = [b for b, _ in module.named_buffers(recurse=False) if b not in persistent]
        if transient:
            model.set_submodule(name, type(module)(config=model.config))


def quantize_float_model(model: Any, low_bits: str = "int8", dtype: torch.dtype = torch.bfloat16) -> Any:
    """``model`` (float weights, e.g. loaded from a folder) with its linear layers and output layer rounded
    to int8 rows (int4 groups with ``low_bits="int4"``) and its embeddings to int8 rows; activations and the
    rest in ``dtype``."""
    from rag.lm.quantized_linear import int4_supported
    from rag.lm.quantized_weight import int4_from_float, int8_from_float

    linear, embedding, head = layer_roles(model)
    weights: dict[str, QuantizedWeight] = {}
    for name, tensor in model.state_dict().items():
        if name in linear | embedding | head and name not in weights:
            dense = tensor.detach().float().cpu().numpy()
            int4 = name in linear | head and low_bits == "int4" and int4_supported(*dense.shape, 32)
            weights[name] = int4_from_float(dense) if int4 else int8_from_float(dense)
    floats = {
        name: tensor.detach().float().cpu().numpy()
        for name, tensor in model.state_dict().items()
        if name not in weights
    }
    config = model.config
    meta = skeleton(config, config._attn_implementation, dtype)
    return materialize(meta, weights, floats)
