"""``require_citation``: the end-of-answer mass moves to an opening bracket, the number is one of the
passages', nothing changes once a marker is written; with SmolLM2 end to end, drafting included."""

from __future__ import annotations

import pytest
import torch

from rag.generation import CausalLMConfig, CausalLMGenerator, Drafting, GenerationParams
from rag.generation.citation_constraint import CitationConstraint
from rag.generation.prompt import has_citation
from rag.types import Document

pytestmark = pytest.mark.slow  # loads the bundled SmolLM2-135M

PASSAGES = [
    Document("fr", "Paris is the capital and largest city of France.", title="France"),
    Document("de", "Berlin is the capital of Germany, with about 3.7 million inhabitants.", title="Germany"),
    Document("jp", "Mount Fuji is 3,776 metres high, the highest mountain in Japan.", title="Fuji"),
]


@pytest.fixture(scope="module")
def constraint(smollm2) -> CitationConstraint:
    model, tokenizer = smollm2
    generator = CausalLMGenerator(model=model, tokenizer=tokenizer)
    return CitationConstraint(tokenizer, len(PASSAGES), sorted(generator.eos_token_ids))


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def test_end_of_answer_mass_moves_to_the_bracket(constraint, smollm2) -> None:
    tokenizer = smollm2[1]
    scores = torch.randn(len(tokenizer))
    eos = constraint.eos_token_ids
    scores[eos[0]] = 20.0  # the model wants to stop
    out = constraint(ids(tokenizer, "Paris is the capital."), scores)
    before, after = scores.softmax(-1), out.softmax(-1)
    assert int(out.argmax()) == constraint.bracket
    assert torch.isinf(out[eos]).all()
    expected = before[constraint.bracket] + before[eos].sum()
    torch.testing.assert_close(after[constraint.bracket], expected)
    others = torch.ones_like(scores, dtype=torch.bool)
    others[[constraint.bracket, *eos]] = False
    torch.testing.assert_close(after[others], before[others])  # every other token keeps its probability


def test_after_the_bracket_only_passage_numbers_then_the_close(constraint, smollm2) -> None:
    tokenizer = smollm2[1]
    opened = [*ids(tokenizer, "Paris is the capital."), constraint.bracket]
    scores = torch.randn(len(tokenizer))
    scores[ids(tokenizer, "7")[0]] = 30.0  # not a passage number
    out = constraint(opened, scores)
    allowed = set(torch.isfinite(out).nonzero().flatten().tolist())
    assert allowed == {c[0] for c in constraint.completions}
    number = constraint.completions[1]  # "2]"
    if len(number) > 1:
        out = constraint([*opened, number[0]], torch.randn(len(tokenizer)))
        assert set(torch.isfinite(out).nonzero().flatten().tolist()) == {number[1]}
    cited = [*opened, *number]
    scores = torch.randn(len(tokenizer))
    assert constraint(cited, scores) is scores  # a marker is written: no change


def test_an_answer_already_citing_is_not_changed(constraint, smollm2) -> None:
    scores = torch.randn(len(smollm2[1]))
    assert constraint(ids(smollm2[1], "Paris [1] is the capital."), scores) is scores


@pytest.mark.parametrize("drafting", [None, Drafting(6)])
def test_answers_cite_and_drafting_keeps_greedy_tokens(smollm2, drafting: Drafting | None) -> None:
    model, tokenizer = smollm2
    generator = CausalLMGenerator(
        CausalLMConfig(defaults=GenerationParams(max_new_tokens=40)), model=model, tokenizer=tokenizer
    )
    questions = ["What is the capital of France?", "How high is Mount Fuji?"]
    for question in questions:
        params = GenerationParams(max_new_tokens=40, require_citation=True, drafting=drafting)
        cited = generator.answer(question, PASSAGES, params)
        assert has_citation(cited.text), cited.text
        reference = generator.answer(question, PASSAGES, GenerationParams(40, require_citation=True))
        assert cited.text == reference.text  # drafting verifies against the same constrained scores
        assert "".join(generator.stream(question, PASSAGES, params)) == cited.text
