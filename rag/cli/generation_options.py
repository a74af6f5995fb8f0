"""Options shared by the commands that generate answers (``ask``, ``eval qa``)."""

from __future__ import annotations

import argparse
from typing import Any

from rag.generation.base import GenerationParams
from rag.generation.drafting import MATCH_SCALED_DRAFT_TOKENS
from rag.lm.policy import PRECISIONS
from rag.models import DEFAULT_GENERATOR


def add_generation_options(parser: argparse.ArgumentParser, *, max_new_tokens: int = 128) -> None:
    parser.add_argument("--generator", default=DEFAULT_GENERATOR, help="LLM: bundled name, folder or hub id")
    parser.add_argument("-k", type=int, default=5, help="passages given to the generator (default 5)")
    parser.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0, help="0 = no top-k cut")
    parser.add_argument("--seed", type=int, help="seed for sampling")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when present)")
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="weights: mixed (the CPU default: the GGUF file's 4-bit tensors and the output layer in int4, "
        "the rest int8) or int4 (all), or dequantized: bf16 (the CUDA default) or exact (float32); see "
        "docs/runtime.md",
    )
    parser.add_argument(
        "--cad-alpha",
        type=float,
        default=0.0,
        help="context-aware decoding strength (0 = off); see docs/generation.md",
    )
    parser.add_argument(
        "--draft-tokens",
        type=int,
        default=0,
        help="retrieval-augmented drafting: longest drafted run verified per step (0 = off); each draft "
        f"is at most 2L - 1 tokens after an L-token match, so {MATCH_SCALED_DRAFT_TOKENS} costs little more "
        "than short drafts and was the fastest on a 2-core Xeon; see docs/generation.md",
    )
    parser.add_argument(
        "--draft-model",
        metavar="NAME",
        help="a small LLM with the generator's tokenizer that drafts alongside retrieval (RASD); needs "
        "--draft-tokens > 0; see docs/generation.md",
    )
    parser.add_argument(
        "--draft-model-tokens",
        type=int,
        metavar="N",
        help="with --draft-model: tokens the draft model drafts per step, one draft-model forward each "
        "(default: --draft-tokens; for a 0.5B drafting for a 1.5B on a 2-core CPU, 1 beat drafting as many "
        "as retrieval: docs/generation.md)",
    )
    parser.add_argument(
        "--parallel-contexts",
        action="store_true",
        help="encode passages apart and reuse their cached KV (APE); see docs/generation.md",
    )
    parser.add_argument("--ape-temperature", type=float, default=0.8, help="APE temperature on the passages")
    parser.add_argument("--ape-scale", type=float, default=0.8, help="APE scaling factor of the passages")
    parser.add_argument(
        "--blend-ratio",
        type=float,
        default=0.0,
        help="with --parallel-contexts: share of passage tokens recomputed across passages (CacheBlend), "
        "trading time to first token for quality; 0 = off; see docs/generation.md",
    )
    parser.add_argument(
        "--keep-passages",
        type=int,
        default=GenerationParams.keep_passages,
        help="answer from the K passages under which the question is most likely (each read apart first, "
        "one forward; K = 1, the default, answers as the prompt holding that passage alone); 0 = all; "
        "docs/answers.md",
    )
    parser.add_argument("--passage-cache-dir", help="directory that keeps passage KV blocks across runs")
    parser.add_argument(
        "--require-citation",
        action="store_true",
        help="the answer may not end before it cites a passage: where it would stop without a [n] marker, "
        "it opens one and the model picks the passage number",
    )


def generator_config(args: argparse.Namespace, **extra: Any) -> dict[str, Any]:
    return {
        "model": args.generator,
        "device": args.device,
        "passage_cache_dir": args.passage_cache_dir,
        "draft_model": args.draft_model,
        "draft_model_tokens": args.draft_model_tokens,
        "precision": args.precision,
        **extra,
    }


def generation_params(args: argparse.Namespace) -> GenerationParams:
    return GenerationParams(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        seed=args.seed,
        cad_alpha=args.cad_alpha,
        draft_tokens=args.draft_tokens,
        parallel_contexts=args.parallel_contexts,
        ape_temperature=args.ape_temperature,
        ape_scale=args.ape_scale,
        blend_ratio=args.blend_ratio,
        keep_passages=args.keep_passages,
        require_citation=args.require_citation,
    )
