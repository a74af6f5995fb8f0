"""The hardware seam: how a causal LM is loaded and run on this machine, decided once at load time.

Loading (:func:`load_causal_lm`), the precision of the weights (:class:`RuntimePolicy`: int4/int8 as stored
in the GGUF file on a CPU, bf16 on CUDA, float32 on request), the linear layers that multiply them
(:mod:`rag.lm.quantized_linear`), the attention functions (:mod:`rag.lm.grouped_attention`,
:mod:`rag.lm.attention`, APE's :mod:`rag.lm.ape_attention`), the KV cache (:mod:`rag.lm.kv_cache`) and the
fused logits operations (:func:`cad_combine`, a Triton kernel on CUDA) live here. The decoding loop, the
drafters, CAD, parallel contexts and the rerankers see a transformers model and reach kernels only through
this package. With ``decoder="llama.cpp"`` the answer's tokens run in llama.cpp's engine
(:mod:`rag.lm.llama_cpp_decoder`), which :func:`token_decoder` hands to the KV batch.
"""

from rag.kernels import cad_combine
from rag.lm.load import load_causal_lm, load_tokenizer, token_decoder, with_decoder
from rag.lm.policy import DECODERS, PRECISIONS, Decoder, Precision, RuntimePolicy

__all__ = [
    "DECODERS",
    "PRECISIONS",
    "Decoder",
    "Precision",
    "RuntimePolicy",
    "cad_combine",
    "load_causal_lm",
    "load_tokenizer",
    "token_decoder",
    "with_decoder",
]
