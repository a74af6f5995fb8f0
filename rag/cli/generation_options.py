"""Options shared by the commands that generate answers (``ask``, ``eval qa``)."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from rag.errors import ConfigError
from rag.generation.base import BlendedContexts, Drafting, GenerationParams, Generator, ParallelContexts
from rag.generation.decode.cad import ContextAwareDecoding
from rag.generation.drafting.retrieval import MATCH_SCALED_DRAFT_TOKENS
from rag.generation.openai_compatible import REMOTE_GENERATOR as REMOTE
from rag.lm.policy import DECODERS, PRECISIONS
from rag.models import DEFAULT_GENERATOR
from rag.registry import build

SEQUENTIAL = "sequential"  # --contexts: all passages in one prompt (GenerationParams.parallel = None)
# options of the local generator that a remote server cannot honour
_LOCAL_ONLY = ("device", "precision", "decoder", "draft_model", "draft_model_tokens", "passage_cache_dir")


def add_generation_options(parser: argparse.ArgumentParser, *, max_new_tokens: int = 128) -> None:
    parser.add_argument(
        "--generator",
        default=DEFAULT_GENERATOR,
        help=f"LLM: bundled name, folder or hub id (default on this machine: {DEFAULT_GENERATOR}, see "
        f"docs/answers.md); or {REMOTE} with --base-url (any /v1/chat/completions server: vLLM, SGLang, "
        "llama.cpp's server, Ollama, rag serve; key from OPENAI_API_KEY)",
    )
    parser.add_argument(
        "--base-url", help=f"with --generator {REMOTE}: the server, e.g. http://127.0.0.1:8080/v1"
    )
    parser.add_argument(
        "--remote-model", help=f"with --generator {REMOTE}: the server's model id (default: its first)"
    )
    parser.add_argument("-k", type=int, default=5, help="passages given to the generator (default 5)")
    # the decoding options default to None ("not given"): generation_params fills in the defaults, which
    # are the pipeline config's when `rag ask --config` names one
    parser.set_defaults(default_max_new_tokens=max_new_tokens)
    parser.add_argument(
        "--max-new-tokens", type=int, help=f"longest answer in tokens (default {max_new_tokens})"
    )
    parser.add_argument("--temperature", type=float, help="0 = greedy (default)")
    parser.add_argument("--top-p", type=float, help="nucleus sampling (default 1: off)")
    parser.add_argument("--top-k", type=int, help="0 = no top-k cut (default)")
    parser.add_argument("--seed", type=int, help="seed for sampling")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when present)")
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="weights: mixed (the CPU default: the GGUF file's 4-bit tensors in int4, the rest and the "
        "output layer in int8) or int4 (all), or dequantized: bf16 (the CUDA default) or exact (float32); "
        "see docs/runtime.md",
    )
    parser.add_argument(
        "--decoder",
        choices=DECODERS,
        help="engine of the answer's tokens: torch (the default) or llama.cpp (the prompt still runs in "
        "torch, then llama.cpp decodes on the same GGUF file; a bundled model on the CPU, llama-cpp-python "
        "installed; parallel and blended --contexts decode in torch only); see docs/runtime.md",
    )
    parser.add_argument(
        "--cad-alpha",
        type=float,
        help="context-aware decoding strength (0 = off); see docs/generation.md",
    )
    parser.add_argument(
        "--draft-tokens",
        type=int,
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
        "--contexts",
        type=contexts_option,
        metavar="MODE",
        help="how the passages are read: sequential (one prompt, the default); parallel (each encoded apart, "
        "its KV cached and reused, read with APE's attention; parallel:T,S sets APE's temperature and scale, "
        "default 0.8,0.8); blend:R (cached as parallel, then the share R of passage tokens recomputed across "
        "passages: CacheBlend); see docs/generation.md",
    )
    parser.add_argument(
        "--keep-passages",
        type=int,
        help="answer from the K passages under which the question is most likely (each read apart first, "
        "one forward; K = 1, the default, answers as the prompt holding that passage alone); 0 = all (the "
        f"default and only choice of {REMOTE}); docs/answers.md",
    )
    parser.add_argument("--passage-cache-dir", help="directory that keeps passage KV blocks across runs")
    parser.add_argument(
        "--require-citation",
        action="store_true",
        default=None,
        help="the answer may not end before it cites a passage: where it would stop without a [n] marker, "
        "it opens one and the model picks the passage number",
    )


def build_generator(args: argparse.Namespace, **extra: Any) -> Generator:
    """The generator the options name: local (``causal-lm``) or remote (``openai-compatible``)."""
    if args.generator != REMOTE:
        if args.base_url or args.remote_model:
            raise ConfigError(f"--base-url and --remote-model go with --generator {REMOTE}")
        return build("generator", "causal-lm", generator_config(args, **extra))
    if not args.base_url:
        raise ConfigError(f"--generator {REMOTE} needs --base-url, e.g. http://127.0.0.1:8080/v1")
    local = [f"--{name.replace('_', '-')}" for name in _LOCAL_ONLY if getattr(args, name) is not None]
    if local:
        raise ConfigError(f"{', '.join(local)}: options of a local generator, not of {REMOTE}")
    return build("generator", REMOTE, {"base_url": args.base_url, "model": args.remote_model, **extra})


def generator_config(args: argparse.Namespace, **extra: Any) -> dict[str, Any]:
    return {
        "model": args.generator,
        "device": args.device,
        "passage_cache_dir": args.passage_cache_dir,
        "draft_model": args.draft_model,
        "draft_model_tokens": args.draft_model_tokens,
        "precision": args.precision,
        **({"decoder": args.decoder} if args.decoder else {}),
        **extra,
    }


def generation_params(args: argparse.Namespace, defaults: GenerationParams | None = None) -> GenerationParams:
    """The decoding options given on the command line over ``defaults`` (a generator's ``default_params()``;
    None: the command's defaults, keeping 1 passage locally and all of them remotely, which gives no
    likelihoods to choose by)."""
    if defaults is None:
        keep = 0 if args.generator == REMOTE else GenerationParams.keep_passages
        defaults = GenerationParams(max_new_tokens=args.default_max_new_tokens, keep_passages=keep)
    given = _given(args, GenerationParams)
    if args.cad_alpha is not None:  # 0 turns a part off, as the flags always did
        given["cad"] = ContextAwareDecoding(args.cad_alpha) if args.cad_alpha else None
    if args.draft_tokens is not None:
        given["drafting"] = Drafting(args.draft_tokens) if args.draft_tokens else None
    if args.contexts is not None:
        given["parallel"] = None if args.contexts == SEQUENTIAL else args.contexts
    return dataclasses.replace(defaults, **given)


def contexts_option(text: str) -> ParallelContexts | BlendedContexts | str:
    """``--contexts MODE``: :data:`SEQUENTIAL`, or the typed part ``GenerationParams.parallel`` takes.

    >>> contexts_option("parallel:0.5,0.9"), contexts_option("blend:0.2")
    (ParallelContexts(ape_temperature=0.5, ape_scale=0.9), BlendedContexts(ratio=0.2))
    """
    mode, _, values = text.partition(":")
    try:
        numbers = [float(v) for v in values.split(",")] if values else []
        if mode == SEQUENTIAL and not numbers:
            return SEQUENTIAL
        if mode == "parallel" and len(numbers) in (0, 2):
            return ParallelContexts(*numbers)
        if mode == "blend" and len(numbers) == 1:
            return BlendedContexts(numbers[0])
    except (ValueError, ConfigError) as error:
        raise argparse.ArgumentTypeError(f"{text!r}: {error}") from error
    raise argparse.ArgumentTypeError(
        f"{text!r}: expected sequential, parallel, parallel:TEMPERATURE,SCALE or blend:RATIO"
    )


def _given(args: argparse.Namespace, config: type) -> dict[str, Any]:
    """The fields of ``config`` that the command line sets (options left out are None)."""
    names = [f.name for f in dataclasses.fields(config)]
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
