"""The engine a CPU user runs today: llama.cpp on the same GGUF file, through llama-cpp-python.

Each call answers the same prompt token ids as ragloom's modes (llama.cpp's own Qwen chat template gave the
same ids), greedy, with the same number of threads, from a cleared cache (cold: llama-cpp-python would
otherwise reuse the longest prefix it still holds). ``prompt_lookup`` turns on llama-cpp-python's
prompt-lookup drafting (``LlamaPromptLookupDecoding``), which needs the logits of every token
(``logits_all``). The end of sequence is blocked before ``min_new_tokens`` by a logits processor, as
ragloom's modes block it.

llama-cpp-python is the optional ``bench`` extra, built from source for the CPU it runs on (``make bench``; on
a CPU with AMX tiles the build names the instruction sets itself and leaves AMX out, whose path crashed here).
"""

from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rag.bench.generate_baselines import Measurement
from rag.lm.llama_cpp_decoder import INSTALL_HINT, llama_cpp_available

__all__ = ["INSTALL_HINT", "LlamaCppGenerate", "llama_cpp_available"]


@dataclass
class LlamaCppGenerate:
    """llama.cpp answering prompt token ids, greedy; ``prompt_lookup`` > 0 drafts that many per step."""

    name: str
    gguf: Path
    eos_token_ids: Collection[int]
    prompt_lookup: int = 0
    threads: int = field(default_factory=torch.get_num_threads)
    context: int = 4096
    _llm: Any = None

    def _model(self) -> Any:
        if self._llm is None:
            from llama_cpp import Llama
            from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

            draft = (
                LlamaPromptLookupDecoding(num_pred_tokens=self.prompt_lookup) if self.prompt_lookup else None
            )
            self._llm = Llama(
                str(self.gguf),
                n_ctx=self.context,
                n_threads=self.threads,
                n_threads_batch=self.threads,
                logits_all=bool(draft),
                draft_model=draft,
                verbose=False,
            )
        return self._llm

    def run(self, input_ids: torch.Tensor, max_new_tokens: int, min_new_tokens: int = 0) -> Measurement:
        llm = self._model()
        llm.reset()  # cold: no prefix of an earlier prompt is reused
        eos = sorted(self.eos_token_ids)
        tokens: list[int] = []

        def block_eos(_: np.ndarray, scores: np.ndarray) -> np.ndarray:
            if len(tokens) < min_new_tokens:
                scores[eos] = -np.inf
            return scores

        from llama_cpp import LogitsProcessorList

        processors = LogitsProcessorList([block_eos]) if min_new_tokens else None
        start = time.perf_counter()
        first = None
        for token in llm.generate(input_ids[0].tolist(), temp=0.0, logits_processor=processors):
            if first is None:
                first = time.perf_counter()
            tokens.append(int(token))
            if token in self.eos_token_ids or len(tokens) >= max_new_tokens:
                break
        end = time.perf_counter()
        return Measurement(tokens, (first or end) - start, end - start)
