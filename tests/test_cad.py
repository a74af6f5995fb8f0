"""Context-aware decoding: the formula, the two-row batched forward, and CAD end to end on SmolLM2."""

from __future__ import annotations

import pytest
import torch

from rag.errors import ConfigError
from rag.generation import CausalLMConfig, CausalLMGenerator, GenerationParams
from rag.generation.decode.cad import ContextAwareDecoding, context_free_messages
from rag.generation.decode.kv_batch import KVBatch, tree_depths, tree_mask
from rag.types import Document

DOCS = [
    Document("fr", "Paris is the capital and largest city of France.", title="France"),
    Document("zz", "The capital of France was moved to Lyon in 2031 by a vote of parliament.", title="News"),
]
QUESTION = "What is the capital of France?"

# -- the formula on crafted logits ----------------------------------------------------------------


def test_cad_formula_is_exact_on_crafted_logits() -> None:
    with_context = torch.tensor([[2.0, 1.0, 0.0, -1.0], [0.0, 0.0, 5.0, 0.0]])  # [2, vocab = 4]
    without_context = torch.tensor([[3.0, 0.0, 0.0, 0.0], [1.0, 2.0, 3.0, 4.0]])
    for alpha in (0.5, 1.0, 3.0):
        got = ContextAwareDecoding(alpha)(with_context, without_context)
        log_p = with_context - with_context.exp().sum(-1, keepdim=True).log()
        log_q = without_context - without_context.exp().sum(-1, keepdim=True).log()
        torch.testing.assert_close(got, (1 + alpha) * log_p - alpha * log_q, atol=1e-6, rtol=0)


def test_cad_moves_the_pick_away_from_the_prior() -> None:
    with_context = torch.tensor([2.0, 1.0, 0.0])  # the passages favour token 0 a little
    without_context = torch.tensor([4.0, 0.0, 0.0])  # the prior favours token 0 a lot
    assert int(with_context.argmax()) == 0
    assert int(ContextAwareDecoding(1.0)(with_context, without_context).argmax()) == 1


def test_cad_validates() -> None:
    with pytest.raises(ConfigError):
        ContextAwareDecoding(-0.1)
    with pytest.raises(ConfigError, match="cad=None turns it off"):
        ContextAwareDecoding(0.0)
    with pytest.raises(ValueError, match="shapes"):
        ContextAwareDecoding(1.0)(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ConfigError):
        GenerationParams(cad=ContextAwareDecoding(-1.0))


def test_context_free_prompt_keeps_the_instruction_and_drops_the_passages() -> None:
    messages = context_free_messages("  Why?  ", "Be brief.")
    assert messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Question: Why?"},
    ]


def test_tree_mask_and_depths() -> None:
    parents = [-1, 0, 0, 1, 3]
    assert tree_depths(parents) == [0, 1, 1, 2, 3]
    mask = tree_mask(parents)
    assert mask[4].tolist() == [True, True, False, True, True]
    assert mask[2].tolist() == [True, False, True, False, False]
    with pytest.raises(ValueError, match="before"):
        tree_mask([-1, 2, 0])


# -- on SmolLM2 -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def generator():
    from rag.lm import load_causal_lm

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    # float32: the checks below compare two arithmetics (a packed batch, single rows) to fp32 tolerance
    model, tokenizer = load_causal_lm("smollm2-135m-instruct", device="cpu", precision="exact")
    yield CausalLMGenerator(
        CausalLMConfig(defaults=GenerationParams(max_new_tokens=12)), model=model, tokenizer=tokenizer
    )
    torch.set_num_threads(threads)


def _prompts(generator: CausalLMGenerator, alpha: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    params = GenerationParams(cad=ContextAwareDecoding(alpha))
    context_free = generator._encode_context_free(QUESTION, params)
    assert context_free is not None
    return generator._encode_prompt(QUESTION, DOCS, params), context_free  # [1, n], [1, m]


@pytest.mark.slow
@torch.inference_mode()
def test_two_row_batch_equals_two_single_row_runs(generator: CausalLMGenerator) -> None:
    """The packed prefill (one forward), then left padding, the padding mask and per-row position ids: each
    row's logits as if it ran alone."""
    prompt, context_free = _prompts(generator)
    assert context_free.shape[1] < prompt.shape[1]  # the context-free row is the padded one
    both = KVBatch(generator.model, [prompt[0], context_free[0]])
    alone = [KVBatch(generator.model, [prompt[0]]), KVBatch(generator.model, [context_free[0]])]

    def check(batched: torch.Tensor, singles: list[torch.Tensor]) -> None:  # [2, ...], each [1, ...]
        for row, single in enumerate(singles):
            torch.testing.assert_close(batched[row], single[0], atol=2e-4, rtol=1e-4)

    check(both.prefill(), [single.prefill() for single in alone])
    assert both.forward_calls == 1  # both prompts in one forward
    prefix = generator.tokenizer.encode(" The capital is", add_special_tokens=False)
    for token in prefix:
        check(both.extend([token]), [single.extend([token]) for single in alone])
    # A token tree, then keeping one branch: the cache must be as if only that branch had been appended.
    a, b, c = generator.tokenizer.encode(" Paris Lyon.", add_special_tokens=False)[:3]
    parents = [-1, -1, 0]  # two alternatives for the next token, then one more token after the first
    check(both.extend([a, b, c], parents), [single.extend([a, b, c], parents) for single in alone])
    both.keep([1])
    for single in alone:
        single.keep([1])
    after = both.extend([c])  # [2, 1, vocab]
    check(after, [single.extend([c]) for single in alone])
    fresh = KVBatch(generator.model, [context_free[0]])  # never saw the tree
    fresh.prefill()
    fresh.extend([*prefix, b])
    torch.testing.assert_close(after[1, -1], fresh.extend([c])[0, -1], atol=2e-4, rtol=1e-4)
    # A chain, then keeping its first node only (cut without a copy): as if only that node had been appended.
    both.extend([a, b, c], [-1, 0, 1])
    both.keep([0])
    fresh.extend([a])
    torch.testing.assert_close(both.extend([b])[1, -1], fresh.extend([b])[0, -1], atol=2e-4, rtol=1e-4)


@pytest.mark.slow
def test_the_context_free_row_leaves_the_main_rows_greedy_tokens(generator: CausalLMGenerator) -> None:
    """CAD decodes the prompt without passages as a second row of the same batch: the main row's greedy
    tokens are those it decodes alone."""
    prompt, context_free = _prompts(generator)

    def greedy(rows: list[torch.Tensor]) -> list[int]:
        batch = KVBatch(generator.model, rows)
        logits, tokens = batch.prefill(), []  # [rows, vocab]
        for _ in range(12):
            tokens.append(int(logits[0].argmax()))
            logits = batch.extend(tokens[-1:])[:, -1]
        return tokens

    with torch.inference_mode():
        assert greedy([prompt[0], context_free[0]]) == greedy([prompt[0]])


@pytest.mark.slow
def test_cad_scores_combine_the_two_rows_logits(generator: CausalLMGenerator) -> None:
    """The scores the logits processors see are the CAD formula over the two prompts' own logits."""
    prompt, context_free = _prompts(generator)
    seen: list[torch.Tensor] = []

    def capture(ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:  # [1, seq], [1, vocab]
        seen.append(scores[0].clone())
        return scores

    capturing = CausalLMGenerator(model=generator.model, tokenizer=generator.tokenizer, processors=[capture])
    params = GenerationParams(max_new_tokens=2, cad=ContextAwareDecoding(0.7))
    first, _ = list(capturing._answer_tokens(prompt, params, context_free))
    with torch.inference_mode():
        with_context = generator.model(prompt).logits[0, -1]  # [vocab]
        without_context = generator.model(context_free).logits[0, -1]
        expected_first = ContextAwareDecoding(0.7)(with_context, without_context)
        step = torch.tensor([[first]])
        with_context = generator.model(torch.cat([prompt, step], 1)).logits[0, -1]
        without_context = generator.model(torch.cat([context_free, step], 1)).logits[0, -1]
        expected_second = ContextAwareDecoding(0.7)(with_context, without_context)
    torch.testing.assert_close(seen[0], expected_first, atol=5e-4, rtol=1e-4)
    torch.testing.assert_close(seen[1], expected_second, atol=5e-4, rtol=1e-4)


@pytest.mark.slow
def test_one_model_call_per_decoding_step(generator: CausalLMGenerator) -> None:
    calls: list[tuple[int, ...]] = []
    hook = generator.model.register_forward_pre_hook(
        lambda module, args, kwargs: calls.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
    )
    try:
        sequential = GenerationParams(max_new_tokens=8, cad=ContextAwareDecoding(1.0), keep_passages=0)
        answer = generator.answer(QUESTION, DOCS, sequential)
    finally:
        hook.remove()
    n = answer.timings.new_tokens
    assert len(calls) == n  # one prefill, then one per token after the first
    prompt, context_free = _prompts(generator)
    assert calls[0] == (1, prompt.shape[1] + context_free.shape[1])  # both prompts packed in one sequence
    assert all(shape == (2, 1) for shape in calls[1:])  # then both rows in every call
    assert answer.timings.decode_steps == n - 1 and answer.timings.tokens_per_step == 1.0


@pytest.mark.slow
def test_cad_with_sampling_is_seeded_and_streams(generator: CausalLMGenerator) -> None:
    def sample(seed: int) -> str:
        params = GenerationParams(
            max_new_tokens=10, temperature=1.0, top_p=0.9, seed=seed, cad=ContextAwareDecoding(0.5)
        )
        return generator.answer(QUESTION, DOCS, params).text

    assert sample(3) == sample(3)
    assert len({sample(seed) for seed in range(4, 8)}) > 1
    params = GenerationParams(max_new_tokens=10, cad=ContextAwareDecoding(1.0))
    pieces = list(generator.stream(QUESTION, DOCS, params))
    assert len(pieces) > 1
    assert "".join(pieces).strip() == generator.answer(QUESTION, DOCS, params).text


@pytest.mark.slow
def test_cad_alpha_from_the_config(generator: CausalLMGenerator) -> None:
    config = CausalLMConfig(defaults=GenerationParams(max_new_tokens=6, cad=ContextAwareDecoding(1.0)))
    assert config.defaults.cad == ContextAwareDecoding(1.0)
    cad = CausalLMGenerator(config, model=generator.model, tokenizer=generator.tokenizer)
    explicit = generator.answer(
        QUESTION, DOCS, GenerationParams(max_new_tokens=6, cad=ContextAwareDecoding(1.0))
    )
    assert cad.answer(QUESTION, DOCS).text == explicit.text


def test_decode_without_the_context_free_prompt_is_refused(generator: CausalLMGenerator) -> None:
    prompt, _ = _prompts(generator)
    with pytest.raises(ValueError, match="without passages"):
        next(generator._answer_tokens(prompt, GenerationParams(cad=ContextAwareDecoding(1.0))))
