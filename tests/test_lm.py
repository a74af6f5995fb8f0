"""rag.lm: GGUF blocks repacked into int4/int8 weights, the kernels' row invariance, the quantized cache, the
policy and the in-place KV cache."""

from __future__ import annotations

import doctest
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

import rag.lm.kv_cache
import rag.lm.quantized_linear
import rag.lm.quantized_weight
from rag.errors import ConfigError, ModelError
from rag.lm import RuntimePolicy, load_causal_lm
from rag.lm.gguf_weights import GGUFModel
from rag.lm.kv_cache import GrowingLayer, new_cache
from rag.lm.quantized_cache import load_weights, save_weights
from rag.lm.quantized_linear import KERNEL_MAX_ROWS, QuantizedLinear, _pack_int4, unpack_int4
from rag.lm.quantized_weight import (
    Int4Weight,
    Int8Weight,
    int4_from_float,
    int4_from_q4_0,
    int4_from_q4_1,
    int8_from_float,
)


@pytest.mark.parametrize("module", [rag.lm.quantized_weight, rag.lm.quantized_linear, rag.lm.kv_cache])
def test_docstring_examples(module) -> None:
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


def random_weight(rows: int, cols: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 0.05, (rows, cols)).astype(np.float32)


@pytest.mark.parametrize("kind", ["Q4_0", "Q4_1"])
def test_4_bit_gguf_blocks_repack_exactly(kind: str) -> None:
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize, quantize

    weight = random_weight(64, 256)
    qtype = GGMLQuantizationType[kind]
    blocks = quantize(weight, qtype)  # [64, bytes per row]
    repack = int4_from_q4_0 if kind == "Q4_0" else int4_from_q4_1
    ours = repack(blocks, 64, 256).dense()
    np.testing.assert_array_equal(ours, dequantize(blocks, qtype).reshape(64, 256))


@pytest.mark.slow
def test_q4_k_blocks_of_a_bundled_file_repack_exactly(tmp_path) -> None:
    import gguf
    from gguf.quants import dequantize

    from rag.lm.quantized_weight import int4_from_q4_k
    from rag.models import bundled_model
    from rag.models.bundled import gguf_file

    path = gguf_file(bundled_model("qwen2.5-coder-0.5b-instruct"), tmp_path)
    tensor = next(t for t in gguf.GGUFReader(str(path)).tensors if t.tensor_type.name == "Q4_K")
    rows, cols = tensor.data.shape[0], int(tensor.shape[0])
    ours = int4_from_q4_k(np.asarray(tensor.data), rows, cols).dense()
    np.testing.assert_array_equal(ours, dequantize(tensor.data, tensor.tensor_type).reshape(rows, cols))


def test_rounding_to_int8_rows_and_int4_groups_stays_within_half_a_step() -> None:
    weight = random_weight(128, 256)
    eight = int8_from_float(weight)
    assert np.all(np.abs(eight.dense() - weight) <= eight.scale[:, None] / 2 + 1e-7)
    four = int4_from_float(weight)
    step = np.repeat(four.scale, 32, axis=1)  # [rows, cols]
    assert np.all(np.abs(four.dense() - weight) <= step / 2 + 1e-6)
    assert four.values().max() <= 15 and four.shape == (128, 256)


def test_packing_in_row_chunks_equals_packing_the_whole_weight_and_unpacks_back() -> None:
    weight = int4_from_float(random_weight(64 * 5, 128))
    whole = torch.ops.aten._convert_weight_to_int4pack_for_cpu(
        torch.from_numpy(weight.values().astype(np.int32)), 1
    )
    assert torch.equal(_pack_int4(weight, chunk_rows=128), whole)
    assert torch.equal(unpack_int4(whole, 64 * 5, 128), torch.from_numpy(weight.values()))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("form", ["int4", "int8"])
def test_a_row_gets_the_same_bits_alone_or_among_up_to_64_rows(form: str, dtype: torch.dtype) -> None:
    dense = random_weight(256, 512)
    weight = int4_from_float(dense) if form == "int4" else int8_from_float(dense)
    layer = QuantizedLinear(weight, np.linspace(-1, 1, 256, dtype=np.float32), dtype)
    x = torch.randn(KERNEL_MAX_ROWS, 512, generator=torch.Generator().manual_seed(1)).to(dtype)
    batch = layer(x)  # [64, 256]
    assert batch.dtype == dtype
    for row in (0, 7, 63):
        assert torch.equal(layer(x[row : row + 1])[0], batch[row])
    reference = x.float() @ torch.from_numpy(weight.dense()).T + layer.bias.float()
    torch.testing.assert_close(batch.float(), reference, atol=0.05, rtol=0.02)
    # more rows run on the weight expanded to the activations' dtype: the same product, within bf16 rounding
    prompt = torch.cat([x, x])  # [128, 512]
    torch.testing.assert_close(layer(prompt)[:KERNEL_MAX_ROWS].float(), batch.float(), atol=0.05, rtol=0.02)
    assert layer(x[None]).shape == (1, KERNEL_MAX_ROWS, 256)  # leading dims kept
    # the last positions of a batch of two (ICR's second pass): rows that are not contiguous in memory
    sliced = torch.stack([x, x.flip(0)])[:, -1:, :]  # [2, 1, 512]: a view of rows 64 apart
    assert not sliced.is_contiguous()
    assert torch.equal(layer(sliced), layer(sliced.contiguous()))


@pytest.mark.parametrize("form", ["int4", "int8"])
def test_layers_of_one_shape_share_the_expanded_weights_buffer_without_mixing_them(form: str) -> None:
    quantize = int4_from_float if form == "int4" else int8_from_float
    weights = [quantize(random_weight(128, 256) * scale) for scale in (1.0, -3.0)]
    layers = [QuantizedLinear(weight) for weight in weights]
    x = torch.randn(KERNEL_MAX_ROWS + 1, 256, generator=torch.Generator().manual_seed(2)).bfloat16()
    for _ in range(2):  # each layer after the other has written the shared buffer
        for layer, weight in zip(layers, weights, strict=True):
            expanded = torch.from_numpy(weight.dense())  # float32, the stored values
            step = float(np.abs(weight.scale).max())  # one quantization step: the other layer's are many away
            torch.testing.assert_close(layer.dense().float(), expanded, atol=step / 8, rtol=2**-7)  # bf16
            reference = x.float() @ expanded.T
            torch.testing.assert_close(layer(x).float(), reference, atol=0.05, rtol=0.02)
    alone = [layer(x) for layer in layers]

    def run(layer: QuantizedLinear, expected: torch.Tensor) -> bool:  # two threads expand at the same time
        return all(torch.equal(layer(x), expected) for _ in range(20))

    with ThreadPoolExecutor(2) as pool:
        assert all(pool.map(run, layers, alone))


def test_an_int8_weight_at_an_unaligned_address_multiplies_several_rows() -> None:
    """A memory-mapped weight lies where the cache file puts it; torch's int8 kernel crashed on 2-64 rows of a
    weight 8 bytes off a 16-byte boundary (the 0.5B's int8 layers were 40 bytes off 64)."""
    weight = int8_from_float(random_weight(256, 512))
    buffer = np.empty(weight.q.nbytes + 64, np.int8)
    start = -buffer.ctypes.data % 64 + 8
    unaligned = buffer[start : start + weight.q.nbytes].reshape(weight.q.shape)
    unaligned[:] = weight.q
    assert unaligned.ctypes.data % 16 == 8
    layer = QuantizedLinear(Int8Weight(unaligned, weight.scale))
    x = torch.randn(8, 512, generator=torch.Generator().manual_seed(2)).bfloat16()
    assert torch.equal(layer(x), QuantizedLinear(weight)(x))


def test_the_quantized_cache_file_round_trips_memory_mapped_and_damage_is_refused(tmp_path) -> None:
    four, eight = int4_from_float(random_weight(64, 64)), int8_from_float(random_weight(8, 32))
    model = GGUFModel(
        "llama", {"a.weight": four, "b.weight": eight}, {"n.weight": np.ones(4, np.float32)}, {}
    )
    path = tmp_path / "weights.safetensors"
    save_weights(path, model, "int8")
    weights, floats = load_weights(tmp_path)
    assert isinstance(weights["a.weight"], Int4Weight)
    np.testing.assert_array_equal(weights["a.weight"].dense(), four.dense())
    np.testing.assert_array_equal(weights["b.weight"].dense(), eight.dense())
    assert isinstance(weights["b.weight"].q, np.memmap)  # the file's pages, not a copy
    np.testing.assert_array_equal(floats["n.weight"], np.ones(4))
    path.write_bytes(path.read_bytes()[:100])  # truncated
    with pytest.raises(ModelError, match="cannot read"):
        load_weights(tmp_path)


def test_the_policy_is_chosen_per_device_and_refuses_cpu_kernels_elsewhere() -> None:
    assert RuntimePolicy.for_device("cpu") == RuntimePolicy("cpu", "mixed")
    assert RuntimePolicy.for_device("cuda").precision == "bf16"
    assert RuntimePolicy("cpu", "int4").low_bits == "int4" and RuntimePolicy("cpu").low_bits == "int8"
    bf16_units = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert RuntimePolicy("cpu").activation_dtype == (torch.bfloat16 if bf16_units else torch.float32)
    assert RuntimePolicy("cpu", activations="bf16").activation_dtype == torch.bfloat16
    assert RuntimePolicy("cpu", "bf16", activations="float32").activation_dtype == torch.bfloat16  # weights
    assert RuntimePolicy("cpu", "exact").activation_dtype == torch.float32
    with pytest.raises(ConfigError, match="activations must be"):
        RuntimePolicy("cpu", activations="fp16")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="CPU int4/int8 kernels"):
        RuntimePolicy("cuda", "mixed")
    with pytest.raises(ConfigError, match="precision must be"):
        RuntimePolicy("cpu", "fp8")  # type: ignore[arg-type]


def test_the_growing_cache_holds_what_concatenation_holds_through_cuts_and_reorders() -> None:
    generator = torch.Generator().manual_seed(0)
    ours, theirs = GrowingLayer(), DynamicLayer()
    for step, n in enumerate([300, 1, 4, 1, 200]):  # past the first buffer's room
        k, v = torch.randn(2, 3, n, 8, generator=generator), torch.randn(2, 3, n, 8, generator=generator)
        a, b = ours.update(k, v), theirs.update(k, v)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        if step == 2:  # a draft tree's rejected nodes cut off, as KVBatch.keep does
            for layer in (ours, theirs):
                layer.keys, layer.values = layer.keys[..., :-2, :], layer.values[..., :-2, :]
        if step == 3:  # kept nodes reordered: a new tensor, no longer a view of the buffer
            index = torch.tensor([*range(302), 303])
            for layer in (ours, theirs):
                layer.keys, layer.values = (
                    layer.keys.index_select(-2, index),
                    layer.values.index_select(-2, index),
                )
    assert ours.get_seq_length() == theirs.get_seq_length() == 300 + 1 + 4 - 2 + 1 - 1 + 200


@pytest.mark.slow
def test_qwen_mixed_keeps_the_4_bit_tensors_and_holds_the_output_layer_in_8_bits() -> None:
    model, _ = load_causal_lm("qwen2.5-coder-0.5b-instruct", device="cpu")
    assert model.lm_head.bits == 8  # the file's Q8_0 output layer: int4 groups cost 3 EM points on XQuAD
    downs = {layer.mlp.down_proj.bits for layer in model.model.layers}
    assert downs == {4, 8}  # the file's Q4_K down projections repacked as int4, its Q6_K ones as int8 rows


@pytest.mark.slow
def test_smollm2_quantized_loads_without_a_float_copy_and_answers_as_float32() -> None:
    model, tokenizer = load_causal_lm("smollm2-135m-instruct", device="cpu")
    exact, _ = load_causal_lm("smollm2-135m-instruct", device="cpu", precision="exact")
    layers = [m for m in model.modules() if isinstance(m, QuantizedLinear)]
    assert layers and all(not isinstance(m, torch.nn.Linear) for m in model.modules())
    assert {m.bits for m in layers} == {4, 8}  # Q4_1 layers exact in int4; the tied Q8_0 output layer int8
    assert model.dtype == RuntimePolicy("cpu").activation_dtype and isinstance(new_cache(model), DynamicCache)
    messages = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
    ids = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.inference_mode():
        ours = model.generate(ids["input_ids"], max_new_tokens=12, do_sample=False)
        theirs = exact.generate(ids["input_ids"], max_new_tokens=12, do_sample=False)
    assert tokenizer.decode(ours[0]) == tokenizer.decode(theirs[0])
    assert "Paris" in tokenizer.decode(ours[0, ids["input_ids"].shape[1] :])


@pytest.mark.slow
def test_a_token_gets_the_same_logits_decoded_alone_or_verified_among_drafted_tokens(smollm2) -> None:
    """A drafted chain verified in one forward (a causal mask over 4 new rows) scores each token bit for bit
    as decoding the tokens one by one does; before grouped SDPA attended each query on its own keys, bf16
    matrix products grouped sums by the number of keys and prompts of 161, 164 and 167 tokens parted."""
    from rag.generation.decode.kv_batch import KVBatch

    model, tokenizer = smollm2
    text = "The highest mountain in Japan is Mount Fuji, about 3,776 meters tall. "
    text += "Paris is the capital of France. "
    ids = torch.tensor(tokenizer(text * 20)["input_ids"])
    chain = [42, 100, 200, 300]
    with torch.inference_mode():
        for length in range(160, 169):
            alone = KVBatch(model, [ids[:length]])
            alone.prefill()
            decoded = torch.stack([alone.extend([token])[0, 0] for token in chain])  # [4, vocab]
            together = KVBatch(model, [ids[:length]])
            together.prefill()
            verified = together.extend(chain)[0]  # [4, vocab]
            assert torch.equal(decoded, verified), length
