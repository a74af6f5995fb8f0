"""SkinnyLinear computes what nn.Linear computes, for every input shape and path, picks a path per
shape by measuring, reorders weights for 4-to-32-row products where memory allows, and can be switched off."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from rag.models import skinny_linear
from rag.models.skinny_linear import (
    MAX_ROWS,
    PACKED_MIN_ROWS,
    TRANSPOSED_IS_FASTER,
    PathKey,
    SkinnyLinear,
    prime,
    row_bucket,
    stock_linears,
    use_skinny_linears,
)

# reordered weights need a torch built with oneDNN (torch.backends.mkldnn); without it no weight is reordered
needs_onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch without oneDNN")

SHAPES = [(1, 7), (2, 7), (3, 7), (1, 1, 7), (2, 1, 7), (1, 4, 7), (3, 5, 7), (0, 7), (5, 9, 7)]


@pytest.fixture
def memory_to_spare(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reordered copies allowed whatever else runs on this machine (their memory rule is tested apart)."""
    monkeypatch.setattr(skinny_linear, "available_bytes", lambda: 1 << 40)


@pytest.fixture
def choices() -> Iterator[dict[PathKey, bool]]:
    """The process-wide measured choices, emptied for the test and restored after it."""
    saved = dict(TRANSPOSED_IS_FASTER)
    TRANSPOSED_IS_FASTER.clear()
    yield TRANSPOSED_IS_FASTER
    TRANSPOSED_IS_FASTER.clear()
    TRANSPOSED_IS_FASTER.update(saved)


@pytest.mark.parametrize("prepack", [True, False])
@pytest.mark.parametrize("transposed", [True, False])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_linear(
    shape: tuple[int, ...],
    bias: bool,
    transposed: bool,
    prepack: bool,
    choices: dict[PathKey, bool],
) -> None:
    torch.manual_seed(0)
    stock = torch.nn.Linear(7, 11, bias=bias)
    skinny = torch.nn.Linear(7, 11, bias=bias)
    skinny.load_state_dict(stock.state_dict())
    use_skinny_linears(skinny, prepack=prepack)
    x = torch.randn(shape)
    rows = x.numel() // 7
    if rows:
        choices[(11, 7, row_bucket(rows), torch.float32)] = transposed
    out = skinny(x)
    assert out.shape == (*shape[:-1], 11)
    assert out.is_contiguous()
    torch.testing.assert_close(out, stock(x), atol=1e-6, rtol=1e-5)


def test_non_contiguous_input_and_one_output() -> None:
    torch.manual_seed(0)
    layer = torch.nn.Linear(6, 1)
    x = torch.randn(6, 2).T  # [2, 6], strides (1, 2)
    expected = layer(x)
    use_skinny_linears(layer)
    torch.testing.assert_close(layer(x), expected, atol=1e-6, rtol=1e-5)


def test_the_first_product_of_a_shape_and_row_bucket_measures_both_paths_once(
    choices: dict[PathKey, bool], monkeypatch: pytest.MonkeyPatch
) -> None:
    layer = torch.nn.Linear(16, 24)
    use_skinny_linears(layer, prepack=False)
    measured: list[int] = []
    measure = SkinnyLinear._transposed_is_faster

    def counted(self: SkinnyLinear, x: torch.Tensor, repeats: int = 5) -> bool:
        measured.append(x.numel() // 16)
        return measure(self, x, repeats)

    monkeypatch.setattr(SkinnyLinear, "_transposed_is_faster", counted)
    for rows in (1, 3, 4, 3, 9, 1, 40):  # 40 rows: beyond MAX_ROWS, plain linear without measuring
        layer(torch.randn(rows, 16))
    assert measured == [1, 3, 9]
    assert set(choices) == {(24, 16, b, torch.float32) for b in (1, 4, 16)}


def test_layers_of_one_shape_in_another_dtype_measure_their_own_choice(
    choices: dict[PathKey, bool], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bf16 copy of a model has the fp32 model's layer shapes; its products are timed apart."""
    measured: list[torch.dtype] = []

    def fastest(self: SkinnyLinear, x: torch.Tensor, repeats: int = 5) -> bool:
        measured.append(self.weight.dtype)
        return self.weight.dtype == torch.bfloat16

    monkeypatch.setattr(SkinnyLinear, "_transposed_is_faster", fastest)
    for dtype in (torch.float32, torch.bfloat16, torch.float32):
        layer = torch.nn.Linear(16, 24, dtype=dtype)
        use_skinny_linears(layer, prepack=False)
        layer(torch.randn(1, 16, dtype=dtype))
    assert measured == [torch.float32, torch.bfloat16]
    assert choices == {(24, 16, 1, torch.float32): False, (24, 16, 1, torch.bfloat16): True}


@needs_onednn
@torch.no_grad()
def test_products_of_4_to_32_rows_reorder_the_weight_once_and_again_after_it_changes(
    choices: dict[PathKey, bool], memory_to_spare: None
) -> None:
    torch.manual_seed(0)
    layer = torch.nn.Linear(16, 24)
    use_skinny_linears(layer)
    layer(torch.randn(3, 16))
    assert getattr(layer, "_packed", None) is None  # three rows: the measured paths
    for rows in (PACKED_MIN_ROWS[torch.float32], MAX_ROWS):
        x = torch.randn(rows, 16)
        torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias))
    stamp, packed = layer._packed
    assert packed is not None and packed.is_mkldnn
    assert set(choices) == {(24, 16, 4, torch.float32)}  # the reordered weight's products are not measured
    layer(torch.randn(5, 16))
    assert layer._packed[1] is packed  # reused
    layer.weight.mul_(2)
    x = torch.randn(4, 16)
    torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias))
    assert layer._packed[0] != stamp and layer._packed[1] is not packed


@needs_onednn
def test_prime_reorders_the_weights_of_prepacking_layers_only(
    choices: dict[PathKey, bool], memory_to_spare: None
) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 24), torch.nn.Linear(24, 8))
    use_skinny_linears(model)
    model[1].prepack = False
    prime(model, max_rows=5)
    assert model[0]._packed[1] is not None and not hasattr(model[1], "_packed")
    assert not choices  # products of 4 or more rows are not measured
    x = torch.randn(4, 16)
    hidden = torch.nn.functional.linear(x, model[0].weight, model[0].bias)
    torch.testing.assert_close(model(x), torch.nn.functional.linear(hidden, model[1].weight, model[1].bias))


@torch.no_grad()
def test_without_memory_for_the_copy_the_weight_is_not_reordered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(skinny_linear, "available_bytes", lambda: skinny_linear.PACK_RESERVE_BYTES)
    torch.manual_seed(0)
    layer = torch.nn.Linear(16, 24)
    use_skinny_linears(layer)
    x = torch.randn(4, 16)
    torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias))
    assert layer._packed[1] is None


@needs_onednn
def test_a_layer_made_in_inference_mode_is_reordered_once(memory_to_spare: None) -> None:
    with torch.inference_mode():
        layer = torch.nn.Linear(16, 24)
        use_skinny_linears(layer)
        x = torch.randn(4, 16)
        torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias))
        packed = layer._packed[1]
        layer(x)
        assert packed is not None and layer._packed[1] is packed


@pytest.mark.skipif(not Path("/proc/meminfo").exists(), reason="no /proc/meminfo (not Linux)")
def test_available_bytes_reads_this_machine() -> None:
    assert 0 < skinny_linear.available_bytes() < 1 << 50


def test_mapped_files_are_not_counted_as_available(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 24683792 kB\nMemAvailable: 10485760 kB\nMapped: 4194304 kB\n")
    assert skinny_linear.available_bytes(str(meminfo)) == 6 << 30
    meminfo.write_text("MemAvailable: 1048576 kB\nMapped: 4194304 kB\n")
    assert skinny_linear.available_bytes(str(meminfo)) == 0
    meminfo.write_text("MemFree: 1048576 kB\n")
    assert skinny_linear.available_bytes(str(meminfo)) == 0
    assert skinny_linear.available_bytes(str(tmp_path / "missing")) == 0


def test_gradients_flow_like_linear() -> None:
    torch.manual_seed(0)
    stock = torch.nn.Linear(5, 3)
    skinny = torch.nn.Linear(5, 3)
    skinny.load_state_dict(stock.state_dict())
    use_skinny_linears(skinny)
    x = torch.randn(4, 5)  # a reordered-weight size: gradients take the measured paths instead
    stock(x).square().sum().backward()
    skinny(x).square().sum().backward()
    assert getattr(skinny, "_packed", None) is None
    torch.testing.assert_close(skinny.weight.grad, stock.weight.grad)
    torch.testing.assert_close(skinny.bias.grad, stock.bias.grad)


def test_swaps_float32_and_bfloat16_linears_only_and_switches_back() -> None:
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 4),
        torch.nn.ReLU(),
        torch.nn.Linear(4, 4).to(torch.bfloat16),
        torch.nn.Linear(4, 4).to(torch.float16),
        torch.nn.Linear(4, 2),
    )
    assert use_skinny_linears(model) == 3
    names = ["SkinnyLinear", "ReLU", "SkinnyLinear", "Linear", "SkinnyLinear"]
    assert [type(m).__name__ for m in model] == names
    with stock_linears(model, None):
        assert [type(m) for m in model] == [torch.nn.Linear, torch.nn.ReLU] + [torch.nn.Linear] * 3
    assert isinstance(model[0], SkinnyLinear) and isinstance(model[4], SkinnyLinear)
    x = torch.randn(1, 4, dtype=torch.bfloat16)  # bf16: one row on the reordered weight where there is one
    torch.testing.assert_close(model[2](x), torch.nn.functional.linear(x, model[2].weight, model[2].bias))
    assert use_skinny_linears(model) == 0  # already done


def test_switches_back_after_an_error() -> None:
    model = torch.nn.Linear(3, 3)
    use_skinny_linears(model)
    with pytest.raises(RuntimeError), stock_linears(model):
        raise RuntimeError("boom")
    assert type(model) is SkinnyLinear


def test_the_loaded_generator_uses_it_and_decodes_the_same_tokens(smollm2) -> None:
    """Greedy decoding with and without SkinnyLinear gives the same tokens on a real model."""
    model, tokenizer = smollm2
    assert isinstance(model.lm_head, SkinnyLinear)
    ids = tokenizer("The capital of France is Paris. The capital of Italy is", return_tensors="pt").input_ids
    with torch.inference_mode():
        fast = model.generate(ids, max_new_tokens=12, do_sample=False)
        with stock_linears(model):
            stock = model.generate(ids, max_new_tokens=12, do_sample=False)
        rows = ids[:, -1:].repeat(MAX_ROWS, 1)  # [MAX_ROWS, 1]: every layer takes the skinny path
        fast_logits = model(rows).logits[:, -1]
        with stock_linears(model):
            stock_logits = model(rows).logits[:, -1]
    assert fast.tolist() == stock.tolist()
    torch.testing.assert_close(fast_logits, stock_logits, atol=1e-3, rtol=1e-4)
