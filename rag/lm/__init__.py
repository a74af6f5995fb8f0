"""The hardware seam: how a causal LM is loaded and run on this machine, decided once at load time.

Loading (:func:`load_causal_lm`), the precision of the weights (:class:`RuntimePolicy`: int4/int8 as stored
in the GGUF file on a CPU, bf16 on CUDA, float32 on request), the linear layers that multiply them
(:mod:`rag.lm.quantized_linear`) and the attention functions (:mod:`rag.lm.grouped_attention`,
:mod:`rag.lm.attention`) live here. The decoding loop, the drafters, CAD, parallel contexts and the rerankers
see a transformers model and import nothing from this package but :func:`load_causal_lm` and
:func:`~rag.lm.attention.attention_implementation`.
"""

from rag.lm.load import load_causal_lm, load_tokenizer
from rag.lm.policy import PRECISIONS, Precision, RuntimePolicy

__all__ = ["PRECISIONS", "Precision", "RuntimePolicy", "load_causal_lm", "load_tokenizer"]
