"""Suite ``generate``: ragloom's decoding modes against llama.cpp on the same GGUF file, on XQuAD RAG prompts.

Prompts are XQuAD-en questions with their top-``k`` paragraphs from a MiniLM Flat index of the XQuAD
paragraphs (built in a temporary directory, as ``rag eval qa`` does), in two shapes: **short** answers (the
QA prompt of :mod:`rag.eval.qa`, scored by SQuAD EM/F1) and **long** answers (an instruction to explain in
detail with quotes; speed only). Every mode answers the same prompt token ids: ragloom's generator in each
mode of :data:`MODES` (the model as ragloom loads it on this device, :mod:`rag.lm`), and the baselines a user
would pick today: llama.cpp on the same GGUF file, plain and with its prompt-lookup drafting
(:mod:`rag.bench.llama_cpp_baseline`, the optional ``bench`` extra), and transformers ``generate()`` on the
model dequantized to float32 (:mod:`rag.bench.generate_baselines`). Modes run one after the other on each
prompt (prompt-major), so load changes on the machine hit every mode alike. Peak memory is measured per
engine in a process of its own (:mod:`rag.bench.engine_memory`). :mod:`rag.bench.generate_report` turns the
answers into the tables; its :func:`run` is the suite.

    rag bench generate            # the 1.5B only if it is installed
    python -c "from rag.bench.generate_report import run; print(run(['smollm2-135m-instruct'], 2, 2))"
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from rag.bench.draft_length import CANDIDATES, measured_draft_tokens
from rag.bench.engine_memory import ENGINES, RAGLOOM_ON_LLAMA_CPP, peak_rss
from rag.bench.generate_baselines import Measurement, TransformersGenerate
from rag.bench.llama_cpp_baseline import INSTALL_HINT, LlamaCppGenerate, llama_cpp_available
from rag.collection import build_index
from rag.corpus import read_squad_questions
from rag.docstore import Docstore
from rag.eval.qa import QA_REMINDER, QA_SYSTEM_PROMPT
from rag.generation import CausalLMConfig, CausalLMGenerator, GenerationParams
from rag.generation.base import BlendedContexts, DecodeStats, Drafting, ParallelContexts
from rag.generation.causal_lm import build_drafter
from rag.generation.contexts.passage_kv_store import PassageKVStore
from rag.generation.decode.cad import ContextAwareDecoding
from rag.generation.drafting.retrieval import MATCH_SCALED_DRAFT_TOKENS
from rag.lm import Decoder, load_causal_lm, with_decoder
from rag.models import bundled_model, install_hint
from rag.models.bundled import gguf_file
from rag.settings import data_dir
from rag.types import Document

LONG_SYSTEM_PROMPT = (
    "Answer the question using only the numbered passages. Explain the answer in detail, in a few "
    "paragraphs: quote the sentences of the passages that support it word for word in double quotes, and "
    "cite each quote with its passage number in square brackets, like [2]."
)

# A smaller model with the same tokenizer, ragloom's draft model (None: there is none).
ASSISTANTS: dict[str, str] = {"qwen2.5-coder-1.5b-instruct": "qwen2.5-coder-0.5b-instruct"}

LLAMA_CPP = "llama.cpp"  # the mode every ratio is taken against, when llama-cpp-python is installed
LLAMA_CPP_LOOKUP = "llama.cpp prompt lookup"
TRANSFORMERS = "generate()"  # the baseline when it is not
ON_LLAMA_CPP = "· llama.cpp decoder"  # the modes whose answer tokens run in llama.cpp (RuntimePolicy.decoder)


@dataclass(frozen=True)
class RagloomMode:
    """One way of running ragloom's generator: which of its decoding parts are on.

    ``store`` selects the prefill: None is the sequential prefill of the whole prompt; ``"cold"``,
    ``"memory"`` and ``"disk"`` are parallel-encoded passage contexts (``GenerationParams.parallel``)
    with nothing cached, with every block in the store's memory tier, and with every block in its directory.
    ``int8`` keeps the blocks as int8 (``CausalLMConfig.passage_cache_int8``); ``blend`` is the share of the
    passage tokens recomputed across passages (``BlendedContexts.ratio``; 0 = APE's ``ParallelContexts``);
    ``keep`` prunes to that many passages by the question's likelihood (``GenerationParams.keep_passages``;
    0 = all). ``draft_model`` fuses the retrieval drafts with the model's smaller same-tokenizer assistant
    (:data:`ASSISTANTS`; RASD, as ``CausalLMConfig.draft_model`` does); models without one skip the mode.
    ``decoder`` is the engine of the answer's tokens (``RuntimePolicy.decoder``): the ``llama.cpp`` modes run
    only when llama-cpp-python is installed.
    """

    name: str
    cad: bool = False
    draft: bool = False
    store: str | None = None
    int8: bool = False
    blend: float = 0.0
    keep: int = 0
    draft_model: bool = False
    decoder: Decoder = "torch"


# The ragloom modes, in the order each prompt runs them (after the transformers baselines). Parallel-cached
# contexts are the three `store=` modes; a new decoding part joins the suite by adding its modes here.
MODES: tuple[RagloomMode, ...] = (
    RagloomMode("ragloom plain"),
    RagloomMode("ragloom CAD", cad=True),
    RagloomMode("ragloom drafting", draft=True),
    RagloomMode("ragloom drafting + draft model", draft=True, draft_model=True),
    RagloomMode("ragloom CAD + drafting", cad=True, draft=True),
    RagloomMode("ragloom parallel, cold", store="cold"),
    RagloomMode("ragloom parallel, warm memory", store="memory"),
    RagloomMode("ragloom parallel, warm disk", store="disk"),
    RagloomMode("ragloom parallel, warm memory, int8", store="memory", int8=True),
    RagloomMode("ragloom parallel, warm memory, blend 0.2", store="memory", blend=0.2),
    RagloomMode("ragloom parallel, warm memory, blend 0.5", store="memory", blend=0.5),
    RagloomMode("ragloom parallel, warm memory, keep 1", store="memory", keep=1),
    RagloomMode("ragloom all combined", cad=True, draft=True, store="memory"),
    RagloomMode(f"ragloom plain {ON_LLAMA_CPP}", decoder="llama.cpp"),
    RagloomMode(f"ragloom drafting {ON_LLAMA_CPP}", draft=True, decoder="llama.cpp"),
    RagloomMode(f"ragloom CAD {ON_LLAMA_CPP}", cad=True, decoder="llama.cpp"),
    RagloomMode(f"ragloom CAD + drafting {ON_LLAMA_CPP}", cad=True, draft=True, decoder="llama.cpp"),
    RagloomMode(
        f"ragloom parallel, warm memory, keep 1 {ON_LLAMA_CPP}", store="memory", keep=1, decoder="llama.cpp"
    ),
)

# (mode, the mode it must match token for token): drafting and caches change speed, never greedy output.
IDENTICAL: tuple[tuple[str, str], ...] = (
    ("ragloom drafting", "ragloom plain"),
    ("ragloom drafting + draft model", "ragloom plain"),
    ("ragloom CAD + drafting", "ragloom CAD"),
    ("ragloom parallel, warm memory", "ragloom parallel, cold"),
    ("ragloom parallel, warm disk", "ragloom parallel, cold"),
)
# (mode, the mode it is compared with) where differences are expected and counted: int8 blocks change answers,
# the engines compute in other precisions (int4 and bf16, llama.cpp's own kernels, float32), and llama.cpp
# adds up a forward of several tokens differently from one-token forwards for some of the file's block types
# (rag.lm.llama_cpp_decoder), so its drafting matches its plain decoding up to that rounding.
COMPARED: tuple[tuple[str, str], ...] = (
    (f"ragloom drafting {ON_LLAMA_CPP}", f"ragloom plain {ON_LLAMA_CPP}"),
    (f"ragloom CAD + drafting {ON_LLAMA_CPP}", f"ragloom CAD {ON_LLAMA_CPP}"),
    (f"ragloom plain {ON_LLAMA_CPP}", LLAMA_CPP),
    ("ragloom parallel, warm memory, int8", "ragloom parallel, warm memory"),
    ("ragloom plain", LLAMA_CPP),
    ("ragloom plain", TRANSFORMERS),
    (LLAMA_CPP_LOOKUP, LLAMA_CPP),
)


@dataclass(frozen=True)
class Prompt:
    shape: str  # "short" | "long"
    question: str
    passages: list[Document]
    golds: list[str]  # gold answers (scored for short answers only)
    gold_retrieved: bool = False  # the paragraph holding the answer is among the passages


@dataclass
class ModelRun:
    """Everything measured for one model: per (shape, mode), one (measurement, text) per prompt, in order."""

    model: str
    baseline: str = TRANSFORMERS  # the mode every ratio is taken against
    answers: dict[tuple[str, str], list[tuple[Measurement, str]]] = field(default_factory=dict)
    modes: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    peak_rss_gb: dict[str, float] = field(default_factory=dict)  # engine -> peak RSS of its own process


@dataclass
class GenerateRun:
    prompts: dict[str, list[Prompt]]
    runs: list[ModelRun]
    settings: dict[str, Any]
    notes: list[str] = field(default_factory=list)  # models not measured, and why

    def mismatches(self, run: ModelRun, mode: str, reference: str) -> tuple[int, int] | None:
        """(prompts whose tokens differ, prompts compared) between two modes, over both shapes."""
        differ = total = 0
        for shape in self.prompts:
            a, b = run.answers.get((shape, mode)), run.answers.get((shape, reference))
            if a is None or b is None:
                return None
            differ += sum(x.tokens != y.tokens for (x, _), (y, _) in zip(a, b, strict=True))
            total += len(a)
        return differ, total


def xquad_prompts(short: int, long: int, k: int, workdir: Path) -> dict[str, list[Prompt]]:
    """Questions spread evenly over XQuAD-en with their top-``k`` paragraphs from a MiniLM Flat index."""
    squad = data_dir() / "xquad-en" / "xquad.en.json"
    questions = read_squad_questions(squad)
    retriever = build_index(squad, workdir, name="dense", fmt="squad", config={"show_progress": False})

    picks = {
        "short": [questions[i * len(questions) // short] for i in range(short)],
        "long": [questions[(2 * i + 1) * len(questions) // (2 * long)] for i in range(long)],
    }
    prompts: dict[str, list[Prompt]] = {}
    with Docstore(retriever.docstore_path) as docstore:
        for shape, chosen in picks.items():
            hits = retriever.search([q.question for q in chosen], k=k)
            prompts[shape] = [
                Prompt(
                    shape,
                    q.question,
                    docstore.get([h.doc_id for h in found]),
                    q.answers,
                    any(h.doc_id == q.doc_id for h in found),
                )
                for q, found in zip(chosen, hits, strict=True)
            ]
    return prompts


def run_ragloom(
    gen: CausalLMGenerator, prompt: Prompt, input_ids: torch.Tensor, params: GenerationParams
) -> Measurement:
    """One answer from ragloom's decoding loop, timed from the (already templated) prompt ids.

    Cutting the prompt for parallel contexts and templating the context-free prompt for CAD are timed: they
    are those modes' own work. The loop is the one ``CausalLMGenerator.answer`` runs; it is driven here
    directly to get the token ids and the decoding counters.
    """
    start = time.perf_counter()
    parallel = gen._split_prompt(prompt.question, prompt.passages, params)
    context_free = gen._encode_context_free(prompt.question, params)
    stats = DecodeStats()
    tokens: list[int] = []
    first = start
    for token in gen._answer_tokens(input_ids, params, context_free, stats, parallel):
        if not tokens:
            first = time.perf_counter()
        tokens.append(token)
    end = time.perf_counter()
    return Measurement(
        tokens, first - start, end - start, stats.decode_steps, stats.accepted_tokens, stats.passages_encoded
    )


class _ModelBench:
    """The generators and baselines of one loaded model, for both prompt shapes."""

    def __init__(
        self,
        name: str,
        lm: Any,
        tokenizer: Any,
        workdir: Path,
        settings: dict[str, Any],
        assistant: Any = None,
        reference: Any = None,
        gguf: Path | None = None,
    ):
        self.name, self.lm, self.tokenizer = name, lm, tokenizer
        self.workdir = workdir
        self.settings = settings
        self.gens: dict[tuple[str, str | None, bool, bool, str], CausalLMGenerator] = {}
        self.stores: dict[tuple[str, str | None, bool], PassageKVStore | None] = {}  # shared by the decoders
        self.assistant = assistant  # the smaller same-tokenizer model: ragloom's draft model (None: none)
        # the model whose answer tokens run in llama.cpp, sharing lm's weights (None: llama.cpp not installed)
        self.on_llama_cpp = with_decoder(lm, name, "llama.cpp") if gguf is not None else None
        self.modes = [
            mode
            for mode in MODES
            if (assistant is not None or not mode.draft_model)
            and (mode.decoder == "torch" or self.on_llama_cpp is not None)
        ]
        eos = self.generator("short", None).eos_token_ids
        self.baselines: list[LlamaCppGenerate | TransformersGenerate] = []
        if gguf is not None:  # llama.cpp on the same file, plain and with prompt lookup
            lookup = settings["prompt_lookup"]
            self.baselines += [
                LlamaCppGenerate(LLAMA_CPP, gguf, eos),
                LlamaCppGenerate(LLAMA_CPP_LOOKUP, gguf, eos, prompt_lookup=lookup),
            ]
        if reference is not None:  # transformers' generate() on the float32 model
            self.baselines.append(TransformersGenerate(TRANSFORMERS, reference, eos))

    def generator(
        self,
        shape: str,
        store: str | None,
        int8: bool = False,
        draft_model: bool = False,
        decoder: Decoder = "torch",
    ) -> CausalLMGenerator:
        """The generator of a prompt shape (its system prompt), store, drafter and decoder, made on first
        use; the decoders share each store."""
        key = (shape, store, int8, draft_model, decoder)
        if key not in self.gens:
            system_prompt = QA_SYSTEM_PROMPT if shape == "short" else LONG_SYSTEM_PROMPT
            config = CausalLMConfig(
                model=self.name,
                system_prompt=system_prompt,
                reminder=QA_REMINDER if shape == "short" else "",
                passage_cache_int8=int8,
                draft_model=ASSISTANTS[self.name] if draft_model else None,
                draft_model_tokens=self.settings.get("draft_model_tokens"),
            )
            directory = self.workdir / f"kv-{self.name.replace('/', '_')}-{shape}-{int8}"
            if (shape, store, int8) not in self.stores:
                self.stores[shape, store, int8] = _passage_store(store, directory)
            # the draft-model mode drafts with the assistant loaded once for every generator
            drafter = build_drafter(config, self.tokenizer, draft_lm=self.assistant) if draft_model else None
            self.gens[key] = CausalLMGenerator(
                config,
                model=self.lm if decoder == "torch" else self.on_llama_cpp,
                tokenizer=self.tokenizer,
                drafter=drafter,
                passage_store=self.stores[shape, store, int8],
            )
        return self.gens[key]

    def params(
        self, gen: CausalLMGenerator, mode: RagloomMode, max_new_tokens: int, min_new_tokens: int
    ) -> GenerationParams:
        """The generator's default parameters (e.g. APE's) with this mode's parts switched on."""
        return replace(
            gen.default_params(),
            max_new_tokens=max_new_tokens,
            min_new_tokens=min_new_tokens,
            cad=ContextAwareDecoding(self.settings["cad_alpha"]) if mode.cad else None,
            drafting=Drafting(self.settings["draft_tokens"]) if mode.draft else None,
            parallel=_contexts(mode),
            keep_passages=mode.keep,
        )

    def prompt_ids(self, prompt: Prompt) -> torch.Tensor:
        gen = self.generator(prompt.shape, None)
        return gen._encode_prompt(prompt.question, prompt.passages, GenerationParams())  # [1, prompt_len]

    def answer(
        self, prompt: Prompt, max_new_tokens: int, min_new_tokens: int = 0
    ) -> dict[str, tuple[Measurement, str]]:
        """Every mode on one prompt, in order; the warm stores are filled (untimed) first."""
        input_ids = self.prompt_ids(prompt)
        warm = {(mode.store, mode.int8) for mode in self.modes if mode.store in ("memory", "disk")}
        for store, int8 in sorted(warm):
            gen = self.generator(prompt.shape, store, int8)
            prime = replace(gen.default_params(), max_new_tokens=1, parallel=ParallelContexts())
            run_ragloom(gen, prompt, input_ids, prime)
        decode = self.generator(prompt.shape, None)._detokenize
        out: dict[str, tuple[Measurement, str]] = {}
        for baseline in self.baselines:
            m = baseline.run(input_ids, max_new_tokens, min_new_tokens)
            out[baseline.name] = (m, decode(m.tokens).strip())
        for mode in self.modes:
            gen = self.generator(prompt.shape, mode.store, mode.int8, mode.draft_model, mode.decoder)
            params = self.params(gen, mode, max_new_tokens, min_new_tokens)
            m = run_ragloom(gen, prompt, input_ids, params)
            out[mode.name] = (m, decode(m.tokens).strip())
        return out


def _contexts(mode: RagloomMode) -> ParallelContexts | BlendedContexts | None:
    if mode.store is None:
        return None
    return BlendedContexts(mode.blend) if mode.blend > 0 else ParallelContexts()


def _passage_store(store: str | None, directory: Path) -> PassageKVStore | None:
    """Nothing kept ("cold"), a memory tier only ("memory"), a directory only ("disk"); None: the default."""
    if store == "cold":
        return PassageKVStore(memory_bytes=0)
    if store == "memory":
        return PassageKVStore(memory_bytes=1 << 30)
    if store == "disk":
        return PassageKVStore(memory_bytes=0, directory=directory)
    return None


def collect(
    models: Sequence[str] = ("qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct"),
    short: int = 10,
    long: int = 3,
    k: int = 5,
    short_tokens: int = 32,
    long_tokens: int = 160,
    long_min_tokens: int = 128,
    cad_alpha: float = 0.5,
    draft_tokens: int | None = MATCH_SCALED_DRAFT_TOKENS,  # None: measured per model (for unscaled drafts)
    draft_model_tokens: int = 2,  # the assistant's share of each draft in the draft-model mode
    prompt_lookup: int = 10,
    progress: bool = True,
) -> GenerateRun:
    """Answer ``short`` + ``long`` XQuAD prompts in every mode with each installed model of ``models``."""
    defaults, ape = CausalLMConfig(), ParallelContexts()
    settings = {
        "k": k,
        "short_tokens": short_tokens,
        "long_tokens": long_tokens,
        "long_min_tokens": long_min_tokens,
        "cad_alpha": cad_alpha,
        "draft_tokens": draft_tokens,
        "draft_model_tokens": draft_model_tokens,
        "prompt_lookup": prompt_lookup,
        "ape": (ape.ape_temperature, ape.ape_scale),
        "draft_ngrams": (defaults.draft_max_ngram, defaults.draft_min_ngram),
        "draft_branches": defaults.draft_branches,
        "draft_match_scaled": defaults.draft_match_scaled,
        "load_start": os.getloadavg()[0],
        "threads": torch.get_num_threads(),
    }
    with tempfile.TemporaryDirectory(prefix="rag-bench-generate-") as tmp:
        workdir = Path(tmp)
        prompts = xquad_prompts(short, long, k, workdir)
        result = GenerateRun(prompts, [], settings)
        for name in models:
            missing = install_hint(name)
            if missing:
                result.notes.append(f"{name}: not measured, {missing}")
                continue
            result.runs.append(_measure_model(name, prompts, workdir, settings, progress))
        settings["load_end"] = os.getloadavg()[0]
    return result


def _measure_model(
    name: str, prompts: dict[str, list[Prompt]], workdir: Path, settings: dict[str, Any], progress: bool
) -> ModelRun:
    lm, tokenizer = load_causal_lm(name)
    reference, _ = load_causal_lm(name, precision="exact")
    bundled = bundled_model(name)
    gguf = None
    if bundled is not None and bundled.fmt == "gguf" and llama_cpp_available():
        gguf = gguf_file(bundled, workdir)
    run = ModelRun(name, baseline=LLAMA_CPP if gguf is not None else TRANSFORMERS)
    run.notes.append(
        f"{name}: ragloom's modes run the model as it loads on this CPU ({_precision(lm)}, attention "
        f"{lm.config._attn_implementation}); `generate()` runs it dequantized to float32 with transformers' "
        "own SDPA attention."
    )
    if gguf is None:
        run.notes.append(f"{name}: llama.cpp not measured: {INSTALL_HINT}.")
    assistant_name = ASSISTANTS.get(name)
    missing = install_hint(assistant_name) if assistant_name else "no smaller same-tokenizer model"
    assistant = None
    if assistant_name and not missing:
        assistant, _ = load_causal_lm(assistant_name)
        run.notes.append(f"{name}: ragloom's draft-model drafting drafts with {assistant_name}.")
    else:
        detail = f"{assistant_name} {missing}" if assistant_name else missing
        run.notes.append(f"{name}: ragloom's draft-model drafting not measured: {detail}.")
    if settings["draft_tokens"] is None:
        drafted = measured_draft_tokens(lm)
        settings = dict(settings, draft_tokens=drafted)
        run.notes.append(
            f"{name}: drafting modes draft up to {drafted} tokens per step, the length of {list(CANDIDATES)} "
            "measured fastest on this machine (`rag.bench.draft_length`)."
        )
    bench = _ModelBench(name, lm, tokenizer, workdir, settings, assistant, reference, gguf)
    _warm_up(bench)
    run.modes = [b.name for b in bench.baselines] + [m.name for m in bench.modes]
    tokens = {  # (max_new_tokens, min_new_tokens)
        "short": (settings["short_tokens"], 0),
        "long": (settings["long_tokens"], settings["long_min_tokens"]),
    }
    for shape, shape_prompts in prompts.items():
        for i, prompt in enumerate(shape_prompts):
            start = time.perf_counter()
            for mode, answer in bench.answer(prompt, *tokens[shape]).items():
                run.answers.setdefault((shape, mode), []).append(answer)
            if progress:
                took = time.perf_counter() - start
                print(f"{name} {shape} prompt {i + 1}/{len(shape_prompts)}: {took:.0f} s", flush=True)
    ids = bench.prompt_ids(prompts["long"][0])[0].tolist()
    eos = bench.generator("long", None).eos_token_ids
    del bench, lm, reference, assistant
    tokens = {"max_new_tokens": settings["long_tokens"], "min_new_tokens": settings["long_min_tokens"]}
    for engine in (e for e in ENGINES if gguf is not None or e not in (LLAMA_CPP, RAGLOOM_ON_LLAMA_CPP)):
        run.peak_rss_gb[engine] = peak_rss(engine, name, ids, eos, **tokens)  # a process of its own
    return run


def _precision(model: Any) -> str:
    from rag.lm.quantized_linear import QuantizedLinear

    bits = sorted({m.bits for m in model.modules() if isinstance(m, QuantizedLinear)})
    activations = str(model.dtype).removeprefix("torch.")
    if not bits:
        return activations
    return " and ".join(f"int{b}" for b in bits) + f" weights, {activations} activations"


def _warm_up(bench: _ModelBench) -> None:
    """One tiny untimed answer per mode: first-call costs (allocations, the model fingerprint) go here."""
    docs = [  # two: keeping one passage on the llama.cpp decoder needs a choice (one is read with APE)
        Document("warm-up", "Paris is the capital and largest city of France.", title="France"),
        Document("warm-up-2", "Berlin is the capital and largest city of Germany.", title="Germany"),
    ]
    for shape in ("short", "long"):
        bench.answer(Prompt(shape, "What is the capital of France?", docs, ["Paris"]), 2)
    for gen in bench.gens.values():
        if gen.passage_store.memory_bytes:
            gen.passage_store.clear_memory()
