"""The llama.cpp decoder (``RuntimePolicy(decoder="llama.cpp")``): the prompt in torch, the answer's tokens in
llama.cpp on the same GGUF file. SmolLM2 is a LLaMA-type file, whose keys llama.cpp keeps with interleaved
RoPE pairs, so these tests also check the layout the KV cache is handed over in. Needs llama-cpp-python (the
``bench`` extra, built from source by ``make bench``)."""

from __future__ import annotations

import doctest
from collections.abc import Iterator
from dataclasses import replace

import pytest
import torch
from test_drafting import COPYING, PASSAGES

import rag.lm.llama_cpp_decoder
from rag.errors import ConfigError
from rag.generation import CausalLMConfig, CausalLMGenerator, ContextAwareDecoding, GenerationParams
from rag.generation.base import DecodeStats, ParallelContexts
from rag.generation.contexts.passage_kv_store import PassageKVStore
from rag.generation.decode.kv_batch import KVBatch
from rag.lm import load_causal_lm, token_decoder, with_decoder

pytest.importorskip("llama_cpp", reason="the llama.cpp decoder comes with the bench extra (make bench)")
pytestmark = pytest.mark.slow

MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def generator() -> Iterator[CausalLMGenerator]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model, tokenizer = load_causal_lm(MODEL, device="cpu", decoder="llama.cpp")
    config = CausalLMConfig(model=MODEL, decoder="llama.cpp", draft_branches=2)
    yield CausalLMGenerator(config, model=model, tokenizer=tokenizer, passage_store=PassageKVStore())
    torch.set_num_threads(threads)


def test_docstring_examples() -> None:
    assert doctest.testmod(rag.lm.llama_cpp_decoder, raise_on_error=True).attempted > 0


def test_the_handed_over_prompt_goes_on_as_llama_cpps_own_prefill(generator: CausalLMGenerator) -> None:
    """The next-token logits after the prompt's KV moved from torch, against llama.cpp reading the whole
    prompt itself: the same argmax and nearly the same distribution (the two prefills round differently)."""
    from llama_cpp import Llama

    decoder = token_decoder(generator.model)
    assert decoder is not None and decoder.interleaved_keys  # SmolLM2: LLaMA-type keys
    for question in COPYING[:3]:
        ids = generator._encode_prompt(question, PASSAGES, GenerationParams())  # [1, len]
        batch = KVBatch(generator.model, [ids[0]])
        first = int(batch.prefill(8)[0].argmax())
        ours = batch.extend([first])[0, -1]  # [vocab]
        llm = Llama(str(decoder.gguf), n_ctx=2048, n_threads=1, logits_all=True, verbose=False)
        llm.eval([*ids[0].tolist(), first])
        theirs = torch.tensor(llm.scores[ids.shape[1]])  # [vocab]
        assert int(ours.argmax()) == int(theirs.argmax()), question
        assert torch.nn.functional.cosine_similarity(ours, theirs, dim=0) > 0.99, question


def test_a_draft_tree_scores_each_node_as_plain_decoding_does(generator: CausalLMGenerator) -> None:
    """Every node of a tree verified in one llama.cpp batch gets the logits of one-token steps down its
    branch, bit for bit: drafting then keeps greedy output and the sampling distribution as on torch."""
    ids = generator._encode_prompt(COPYING[0], PASSAGES, GenerationParams())[0]
    tree = KVBatch(generator.model, [ids])
    root = int(tree.prefill(16)[0].argmax())
    a, b, c = 504, 1001, 2300
    logits = tree.extend([root, a, b, c], [-1, 0, 0, 2])[0]  # [4, vocab]: root; a; b; c under b
    tree.keep([0, 2, 3])
    after = tree.extend([7])[0, -1]
    chain = KVBatch(generator.model, [ids])
    chain.prefill(16)
    steps = [chain.extend([token])[0, -1] for token in (root, b, c, 7)]
    assert torch.equal(logits[0], steps[0]) and torch.equal(logits[2], steps[1])
    assert torch.equal(logits[3], steps[2]) and torch.equal(after, steps[3])
    other = KVBatch(generator.model, [ids])
    other.prefill(16)
    assert torch.equal(logits[1], other.extend([root, a])[0, -1])


def test_keeping_one_passage_goes_on_from_that_passages_prompt_cold_and_warm() -> None:
    """In float32 the kept passage's cache is its sequential prompt's up to rounding
    (tests/test_passage_pruning.py); handed to llama.cpp, it scores the next token as that prompt does, and
    answers the same from the store as cold, with CAD too."""
    model, tokenizer = load_causal_lm(MODEL, device="cpu", precision="exact", decoder="llama.cpp")
    generator = CausalLMGenerator(CausalLMConfig(model=MODEL), model=model, tokenizer=tokenizer)
    question = COPYING[4]  # Mount Fuji: the second passage is kept
    keep = GenerationParams(max_new_tokens=16, keep_passages=1)
    parallel = generator._split_prompt(question, PASSAGES, keep)
    alone = torch.cat([parallel.prefix_ids, parallel.passage_ids[1], parallel.question_ids])  # [n]
    pruned = generator._parallel_prefill(keep).batch(parallel)
    first = int(pruned.prefill(8)[0].argmax())
    sequential = KVBatch(model, [alone])
    assert int(sequential.prefill(8)[0].argmax()) == first
    ours, theirs = pruned.extend([first])[0, -1], sequential.extend([first])[0, -1]  # [vocab]
    assert int(ours.argmax()) == int(theirs.argmax())
    assert torch.nn.functional.cosine_similarity(ours, theirs, dim=0) > 0.99
    for cad in (None, ContextAwareDecoding(0.5)):
        params = replace(keep, cad=cad)
        context_free = generator._encode_context_free(question, params)
        stats = DecodeStats()
        cold = list(generator._answer_tokens(parallel.input_ids, params, context_free, stats, parallel))
        assert stats.passages_pruned == 2 and len(cold) > 4
        stats = DecodeStats()
        warm = list(generator._answer_tokens(parallel.input_ids, params, context_free, stats, parallel))
        assert warm == cold and stats.passages_from_memory > 0


def test_parallel_contexts_are_refused_not_decoded_in_torch(generator: CausalLMGenerator) -> None:
    for params in (
        GenerationParams(parallel=ParallelContexts(), keep_passages=0),
        GenerationParams(keep_passages=2),
    ):
        with pytest.raises(ConfigError, match="torch only"):
            generator.answer(COPYING[0], PASSAGES, params)


def test_two_answers_read_in_turns_each_get_a_context_of_their_own(generator: CausalLMGenerator) -> None:
    params = GenerationParams(max_new_tokens=12)
    expected = [generator.answer(q, PASSAGES, params).text for q in COPYING[:2]]
    streams = [iter(generator.stream(q, PASSAGES, params)) for q in COPYING[:2]]
    texts = ["", ""]
    done = [False, False]
    while not all(done):
        for i, stream in enumerate(streams):
            if not done[i]:
                piece = next(stream, None)
                done[i] = piece is None
                texts[i] += piece or ""
    assert [t.strip() for t in texts] == [e.strip() for e in expected]


def test_with_decoder_shares_the_weights_and_switches_back() -> None:
    model, _ = load_causal_lm(MODEL, device="cpu")
    on_llama = with_decoder(model, MODEL, "llama.cpp")
    assert token_decoder(model) is None and token_decoder(on_llama) is not None
    assert on_llama.model is model.model  # the same modules
    assert token_decoder(with_decoder(on_llama, MODEL, "torch")) is None
