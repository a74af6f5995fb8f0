"""Answer generation: the generator contract, the RAG prompt, the local causal LM and any OpenAI-compatible
server."""

from __future__ import annotations

from rag.generation.base import (
    BlendedContexts,
    ChatParams,
    Drafting,
    GenerationParams,
    Generator,
    ParallelContexts,
    SamplingParams,
    TokenLogprobs,
)
from rag.generation.causal_lm import CausalLMConfig, CausalLMGenerator
from rag.generation.contexts.passage_kv_store import PassageKVStore
from rag.generation.decode.cad import ContextAwareDecoding
from rag.generation.openai_compatible import OpenAICompatibleConfig, OpenAICompatibleGenerator
from rag.generation.prompt import build_messages, parse_citations

__all__ = [
    "BlendedContexts",
    "CausalLMConfig",
    "CausalLMGenerator",
    "ChatParams",
    "ContextAwareDecoding",
    "Drafting",
    "GenerationParams",
    "Generator",
    "OpenAICompatibleConfig",
    "OpenAICompatibleGenerator",
    "ParallelContexts",
    "PassageKVStore",
    "SamplingParams",
    "TokenLogprobs",
    "build_messages",
    "parse_citations",
]
