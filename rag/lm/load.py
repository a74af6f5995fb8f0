"""Load a causal LM and its tokenizer under a :class:`~rag.lm.policy.RuntimePolicy`.

>>> model, tokenizer = load_causal_lm("qwen2.5-coder-0.5b-instruct")  # doctest: +SKIP
>>> model.dtype, type(model.lm_head).__name__  # doctest: +SKIP  (float32 on a CPU without bf16 units)
(torch.bfloat16, 'QuantizedLinear')
"""

from __future__ import annotations

import copy as _copy
import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rag.errors import ConfigError, ModelError
from rag.lm.policy import Activations, Decoder, Precision, RuntimePolicy

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from rag.lm.llama_cpp_decoder import LlamaCppDecoder

logger = logging.getLogger(__name__)


def load_causal_lm(
    name: str,
    *,
    device: str | None = None,
    precision: Precision | None = None,
    attn_implementation: str = "sdpa",
    decoder: Decoder | None = None,
    activations: Activations | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A causal LM in eval mode and its tokenizer: ``name`` is a bundled model, a local folder or a hub id.

    ``precision`` (default: the device's, see :class:`RuntimePolicy`): ``mixed`` and ``int4`` keep a bundled
    GGUF model's 4-bit weights as they are and round the others to int8 rows or int4 groups (a folder's or
    hub model's float weights are rounded the same way); ``bf16`` and ``exact`` dequantize to bf16 and
    float32. ``activations``: the quantized precisions' compute dtype (default ``auto``: bf16 where the CPU
    has bf16 units, else float32).
    ``attn_implementation``: "sdpa" runs as :data:`~rag.lm.grouped_attention.GROUPED_SDPA`; "eager" returns
    attention weights. ``decoder="llama.cpp"`` (a bundled GGUF model) also loads the file in llama.cpp, which
    then runs the answer's tokens (:func:`token_decoder`).
    """
    from rag.lm.grouped_attention import register_grouped_sdpa
    from rag.models import resolve_model

    policy = RuntimePolicy.for_device(device, precision, decoder, activations)
    try:
        if policy.quantized:
            model, tokenizer = _load_quantized(name, policy, attn_implementation)
        else:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            source = resolve_model(name)
            dtype = policy.activation_dtype
            tokenizer = AutoTokenizer.from_pretrained(source)
            model = AutoModelForCausalLM.from_pretrained(
                source, dtype=dtype, attn_implementation=attn_implementation
            )
            model = model.to(policy.device).eval()
    except OSError as error:
        raise ModelError(
            f"could not load model {name!r}: {error}\n"
            "Bundled models work offline; a hub id needs the hub or a local copy of it."
        ) from error
    if attn_implementation == "sdpa":
        model.set_attn_implementation(register_grouped_sdpa())  # SDPA, with decode-sized GQA unrepeated
    if policy.decoder == "llama.cpp":
        model._ragloom_decoder = _llama_cpp_decoder(name, model)
    return model, tokenizer


def with_decoder(model: Any, name: str, decoder: Decoder) -> Any:
    """``model`` (loaded from bundled ``name``) with its answer tokens run by ``decoder``: a shallow copy
    sharing the weights, for a process that runs both decoders (the benchmark)."""
    copy = _copy.copy(model)
    copy.__dict__.pop("_ragloom_decoder", None)
    if decoder == "llama.cpp":
        copy._ragloom_decoder = _llama_cpp_decoder(name, model)
    return copy


def token_decoder(model: Any) -> LlamaCppDecoder | None:
    """The llama.cpp engine that runs ``model``'s answer tokens, or None: torch runs them."""
    return getattr(model, "_ragloom_decoder", None)


def _llama_cpp_decoder(name: str, model: Any) -> LlamaCppDecoder:
    from rag.lm.llama_cpp_decoder import LlamaCppDecoder
    from rag.lm.quantized_cache import ensure_gguf
    from rag.models import bundled_model

    bundled = bundled_model(name)
    if bundled is None or bundled.fmt != "gguf":
        raise ConfigError(f"decoder 'llama.cpp' runs the bundled GGUF models; {name!r} is not one")
    return LlamaCppDecoder(ensure_gguf(bundled), model.config.model_type)


def _load_quantized(name: str, policy: RuntimePolicy, attn_implementation: str) -> tuple[Any, Any]:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from rag.lm.quantized_cache import ensure_quantized, load_weights
    from rag.lm.quantized_model import materialize, quantize_float_model, skeleton
    from rag.models import bundled_model, resolve_model

    bundled = bundled_model(name)
    if bundled is not None and bundled.fmt == "gguf":
        folder = ensure_quantized(bundled, policy.precision, policy.low_bits)
        model = skeleton(AutoConfig.from_pretrained(folder), attn_implementation, policy.activation_dtype)
        materialize(model, *load_weights(folder))
        return model, AutoTokenizer.from_pretrained(folder)
    source: Path | str = resolve_model(name)
    model = AutoModelForCausalLM.from_pretrained(
        source, dtype="float32", attn_implementation=attn_implementation
    )
    quantized = quantize_float_model(model, policy.low_bits, policy.activation_dtype)
    return quantized, AutoTokenizer.from_pretrained(source)


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    """The tokenizer alone of a bundled model, a local folder or a hub id (no weights are loaded)."""
    from transformers import AutoTokenizer

    from rag.models import bundled_model, resolve_model
    from rag.models.bundled import gguf_file

    bundled = bundled_model(name)
    try:
        if bundled is not None and bundled.fmt == "gguf":  # read from the file: no conversion of the weights
            with tempfile.TemporaryDirectory() as work:
                gguf = gguf_file(bundled, Path(work))
                return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        return AutoTokenizer.from_pretrained(resolve_model(name))
    except OSError as error:
        raise ModelError(f"could not load the tokenizer of {name!r}: {error}") from error
