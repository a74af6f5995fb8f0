"""CAD combine: the torch reference against two log-softmaxes, and the Triton kernel against the reference.

Without a GPU the Triton kernel runs under the interpreter: tests/conftest.py sets ``TRITON_INTERPRET=1``
before anything imports Triton.
"""

from __future__ import annotations

import pytest
import torch

from rag.generation.decode.cad import ContextAwareDecoding
from rag.kernels import cad_combine
from rag.kernels.cad_combine_ref import cad_combine_reference
from rag.kernels.cad_combine_triton import cad_combine_triton

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def naive_cad(a: torch.Tensor, b: torch.Tensor, alpha: float) -> torch.Tensor:
    return (1 + alpha) * a.double().log_softmax(-1) - alpha * b.double().log_softmax(-1)


def logits(shape: tuple[int, ...], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return 4 * torch.randn(shape, generator=g), 4 * torch.randn(shape, generator=g)


# (shape, alpha): one token, odd vocabularies, a block boundary plus one, Qwen2.5's vocabulary
CASES = [((1, 1), 0.5), ((3, 17), 1.0), ((2, 1, 4097), 0.3), ((2, 151_936), 0.5), ((4, 33), 0.0)]


@pytest.mark.parametrize(("shape", "alpha"), CASES)
def test_reference_matches_the_two_log_softmaxes(shape, alpha) -> None:
    a, b = logits(shape, seed=0)
    out = cad_combine_reference(a, b, alpha)
    assert out.dtype == torch.float32 and out.shape == a.shape
    torch.testing.assert_close(out.double(), naive_cad(a, b, alpha), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(("shape", "alpha"), CASES)
def test_triton_matches_the_reference(shape, alpha) -> None:
    a, b = (x.to(DEVICE) for x in logits(shape, seed=1))
    torch.testing.assert_close(
        cad_combine_triton(a, b, alpha), cad_combine_reference(a, b, alpha), rtol=1e-5, atol=1e-4
    )


def test_triton_with_banned_tokens_half_precision_and_strided_rows() -> None:
    a, b = logits((3, 300), seed=2)
    a[:, ::7] = float("-inf")  # tokens a logits processor has banned in the context row
    a, b = a.to(DEVICE, torch.bfloat16)[:, :257], b.to(DEVICE, torch.bfloat16)[:, :257]  # rows of stride 300
    expected = naive_cad(a.float(), b.float(), 0.7).float()
    out = cad_combine_triton(a, b, 0.7)
    assert torch.equal(out.isneginf(), expected.isneginf())
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(cad_combine_reference(a, b, 0.7), expected, rtol=1e-5, atol=1e-4)


def test_cad_processor_uses_the_dispatcher_and_keeps_its_outputs() -> None:
    a, b = logits((2, 1000), seed=3)
    out = ContextAwareDecoding(alpha=0.5)(a, b)
    assert torch.equal(out, cad_combine(a, b, 0.5))
    torch.testing.assert_close(out.double(), naive_cad(a, b, 0.5), rtol=1e-5, atol=1e-4)


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="one shape"):
        cad_combine(torch.zeros(2, 3), torch.zeros(2, 4), 0.5)
    with pytest.raises(ValueError, match="alpha"):
        cad_combine(torch.zeros(2, 3), torch.zeros(2, 3), -1.0)


def test_dispatchers_route_to_triton_when_it_applies(monkeypatch) -> None:
    """With ``use_triton`` true (a CUDA tensor), each dispatcher runs the Triton kernel, not the reference."""
    from rag.kernels import dispatch

    def refuse(*args, **kwargs):
        raise AssertionError("the reference ran")

    monkeypatch.setattr(dispatch, "use_triton", lambda tensor: True)
    for name in ("cad_combine_reference", "pq_adc_reference", "segmented_attention_reference"):
        monkeypatch.setattr(dispatch, name, refuse)
    a, b = (x.to(DEVICE) for x in logits((2, 50), seed=4))
    torch.testing.assert_close(dispatch.cad_combine(a, b, 0.5), cad_combine_reference(a, b, 0.5))
    tables, codes = torch.randn(3, 2, 5, device=DEVICE), torch.randint(0, 5, (7, 2), device=DEVICE)
    torch.testing.assert_close(
        dispatch.pq_adc(tables, codes), tables[:, 0, codes[:, 0]] + tables[:, 1, codes[:, 1]]
    )
    q, k = torch.randn(1, 2, 3, 16, device=DEVICE), torch.randn(1, 1, 4, 16, device=DEVICE)
    ones, ids = torch.ones(2, device=DEVICE), torch.tensor([0, 1, 1, 0], device=DEVICE)
    expected = torch.softmax(q @ k.transpose(-1, -2) / 4, -1) @ k  # t = a = 1: plain attention
    torch.testing.assert_close(dispatch.segmented_attention(q, k, k, ids, ones, ones), expected)
