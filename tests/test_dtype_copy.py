"""A loaded model's copy in another dtype: converted parameters, buffers kept, the original untouched."""

from __future__ import annotations

import doctest

import pytest
import torch

import rag.models.dtype_copy
from rag.models.dtype_copy import model_copy
from rag.models.skinny_linear import SkinnyLinear


def test_docstring_examples() -> None:
    assert doctest.testmod(rag.models.dtype_copy).failed == 0


@pytest.mark.slow
def test_a_bf16_copy_of_smollm2_computes_the_model_s_logits_in_bf16(smollm2) -> None:
    model, tokenizer = smollm2
    before = {name: p.data_ptr() for name, p in model.named_parameters()}
    half = model_copy(model, torch.bfloat16)
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    assert not any(isinstance(m, SkinnyLinear) for m in half.modules())  # stock modules
    assert any(isinstance(m, SkinnyLinear) for m in model.modules())
    assert model.dtype == torch.float32 and before == {n: p.data_ptr() for n, p in model.named_parameters()}
    assert not half.training and not any(p.requires_grad for p in half.parameters())
    for name, buffer in half.named_buffers():  # the rotary frequencies, shared and still fp32
        assert buffer.data_ptr() == model.get_buffer(name).data_ptr()
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.inference_mode():
        exact = model(input_ids=ids).logits[0, -1]  # [vocab]
        rounded = half(input_ids=ids).logits[0, -1].float()
    assert int(rounded.argmax()) == int(exact.argmax())
    torch.testing.assert_close(rounded.softmax(-1), exact.softmax(-1), atol=0.02, rtol=0)
