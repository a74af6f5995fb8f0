"""A copy of a loaded transformers model in another floating-point dtype, built without a second load.

Passage pruning reads the question once per passage, a forward of ~75 rows that is compute-bound on a CPU;
in bf16 on a CPU with AMX tiles it runs ~2x faster than in fp32 (rag.generation.passage_pruning). The copy is
made from the loaded model's own tensors: its modules are built on the meta device (no memory, no
initialisation), then take the converted parameters. Tied weights stay tied (converted once), non-persistent
buffers (rotary frequencies) are shared as they are, and the copy is in eval mode without gradients. Custom
module classes set on the original (``SkinnyLinear``) are not carried over: the copy has the stock modules.

:func:`bf16_is_faster` is the one rule for when such a copy pays: the question reader, the pruning's scoring
head and the draft model (rag.generation.draft_model.drafting_copy) go by it.
"""

from __future__ import annotations

import copy
from typing import Any

import torch


def model_copy(model: Any, dtype: torch.dtype) -> Any:
    """``model`` (a transformers ``PreTrainedModel``) with its floating-point parameters in ``dtype``.

    >>> from transformers import Qwen2Config, Qwen2ForCausalLM
    >>> config = Qwen2Config(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
    ...                      num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)
    >>> half = model_copy(Qwen2ForCausalLM(config), torch.bfloat16)
    >>> half.lm_head.weight.dtype, half.lm_head.weight.data_ptr() == half.model.embed_tokens.weight.data_ptr()
    (torch.bfloat16, True)
    """
    with torch.device("meta"):
        twin = type(model)(copy.deepcopy(model.config))
    converted: dict[int, torch.Tensor] = {}  # the original tensor's id -> its copy: tied weights stay tied
    state = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) not in converted:
            data = tensor.detach()
            converted[id(tensor)] = data.to(dtype) if data.is_floating_point() else data.clone()
        state[name] = converted[id(tensor)]
    twin.load_state_dict(state, strict=True, assign=True)
    persistent = set(state)
    for name, buffer in model.named_buffers():
        if name not in persistent:
            owner, _, leaf = name.rpartition(".")
            twin.get_submodule(owner).register_buffer(leaf, buffer, persistent=False)
    twin.config.dtype = dtype
    return twin.eval().requires_grad_(False)


def bf16_is_faster(tensor: torch.Tensor) -> bool:
    """Whether products with ``tensor`` run faster in bf16: it is fp32, on a CPU with bf16 matrix units."""
    return tensor.dtype == torch.float32 and tensor.device.type == "cpu" and cpu_has_bf16_units()


def cpu_has_bf16_units() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (AMX tiles or AVX512-BF16)."""
    cpu = torch.cpu
    return bool(cpu._is_amx_tile_supported() or cpu._is_avx512_bf16_supported())
