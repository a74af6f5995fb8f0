"""The ``openai-compatible`` generator against a real server: ``rag serve`` in its own process on loopback,
serving SmolLM2 as a plain chat model. Greedy answers through the server must be the local generator's
answers, token for token, with the same citations; failures must say what went wrong."""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from openai import OpenAI, UnprocessableEntityError
from processes import RAG, TOKEN, RagServer
from test_serving_app import DOCS, build_tiny_collection

from rag.cli import build_parser
from rag.cli.generation_options import build_generator, generation_params
from rag.errors import ConfigError, RemoteError
from rag.generation.base import Drafting, GenerationParams, ParallelContexts
from rag.generation.causal_lm import CausalLMConfig, CausalLMGenerator
from rag.generation.decode.cad import ContextAwareDecoding
from rag.generation.openai_compatible import OpenAICompatibleConfig, OpenAICompatibleGenerator
from rag.indexes import load_index
from rag.pipeline import Pipeline
from rag.registry import build
from rag.rerankers.first import FirstReranker
from rag.rerankers.listwise import ListwiseReranker
from rag.rerankers.listwise_base import ListwiseConfig
from rag.rerankers.lm import MemoryDocs
from rag.types import Document, Hit

pytestmark = pytest.mark.slow

MODEL = "smollm2-135m-instruct"
KEY_ENV = "RAG_TEST_REMOTE_KEY"
PASSAGES = [Document(d["id"], d["text"], title=d["title"]) for d in DOCS[:2]]
QUESTION = "What is the capital of France?"
ALL_PASSAGES = GenerationParams(max_new_tokens=24, keep_passages=0)


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_collection(tmp_path_factory.mktemp("remote"))


@pytest.fixture(scope="module")
def server(index_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RagServer]:
    log = tmp_path_factory.mktemp("remote-log") / "serve.log"
    served = RagServer({"tiny": index_dir}, log, "--generator", MODEL, "--threads", "1")
    yield served
    served.stop()


@pytest.fixture(scope="module")
def local() -> CausalLMGenerator:
    return CausalLMGenerator(CausalLMConfig(model=MODEL, threads=1))


@pytest.fixture
def url(server: RagServer, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(KEY_ENV, TOKEN)
    return f"{server.url}/v1"


def remote(url: str, **options: object) -> OpenAICompatibleGenerator:
    """A generator on ``url`` with the test's key, answering with SmolLM2 unless ``options`` say otherwise."""
    values = {"base_url": url, "api_key_env": KEY_ENV, "model": MODEL, **options}
    return OpenAICompatibleGenerator(OpenAICompatibleConfig(**values))  # type: ignore[arg-type]


def test_server_lists_its_generator_and_chats_without_retrieval(server: RagServer) -> None:
    with server.client() as client:
        ids = [m["id"] for m in client.get("/v1/models").json()["data"]]
        assert ids == [MODEL, "tiny"]  # the generator as a plain chat model, then the collections
        reply = client.post(
            "/v1/chat/completions",
            json={"model": MODEL, "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8},
        ).json()
    assert reply["choices"][0]["message"]["content"].strip()
    assert "passages" not in reply and "citations" not in reply  # a plain chat retrieves nothing
    assert 0 < reply["usage"]["completion_tokens"] <= 8


def test_remote_answer_is_the_local_answer(url: str, local: CausalLMGenerator) -> None:
    expected = local.answer(QUESTION, PASSAGES, ALL_PASSAGES)
    got = remote(url).answer(QUESTION, PASSAGES, ALL_PASSAGES)
    assert got.text == expected.text and "Paris" in got.text
    assert got.citations == expected.citations and got.citations[0] == "paris"
    assert got.timings.new_tokens == expected.timings.new_tokens
    assert got.timings.prefill_s > 0


def test_remote_stream_pieces_make_the_answer(url: str, local: CausalLMGenerator) -> None:
    stream = remote(url).stream(QUESTION, PASSAGES, ALL_PASSAGES)
    pieces = list(stream)
    assert len(pieces) > 1  # streamed, not one block
    assert "".join(pieces) == stream.answer.text == local.answer(QUESTION, PASSAGES, ALL_PASSAGES).text
    assert stream.answer.citations[0] == "paris"


def test_remote_model_defaults_to_the_servers_first(url: str) -> None:
    assert remote(url, model=None).model == MODEL  # rag serve lists its generator first


def test_pipeline_answers_through_the_remote(url: str, index_dir: Path) -> None:
    pipeline = Pipeline(load_index(index_dir), remote(url), k=2)
    answer = pipeline.answer(QUESTION)  # the remote's defaults: all passages, greedy
    assert "Paris" in answer.text
    assert answer.citations[0] == "paris"
    assert answer.timings.retrieve_s > 0


def test_cli_asks_through_the_remote(server: RagServer, index_dir: Path) -> None:
    args = ["ask", QUESTION, "--index", str(index_dir), "-k", "2", "--max-new-tokens", "24"]
    args += ["--generator", "openai-compatible", "--base-url", f"{server.url}/v1", "--remote-model", MODEL]
    env = {**os.environ, "OPENAI_API_KEY": TOKEN}
    done = subprocess.run([RAG, *args], capture_output=True, text=True, env=env, cwd="/", timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Paris" in done.stdout.splitlines()[0]
    assert "*[1] paris" in done.stdout and "Cited: paris" in done.stdout


def test_pipeline_config_names_the_remote(server: RagServer, index_dir: Path, tmp_path: Path) -> None:
    generator = {"name": "openai-compatible", "base_url": f"{server.url}/v1", "model": MODEL}
    generator |= {"api_key_env": KEY_ENV, "defaults": {"max_new_tokens": 24, "keep_passages": 0}}
    path = tmp_path / "pipeline.json"
    path.write_text(json.dumps({"index": str(index_dir), "k": 2, "generator": generator}))
    args = [RAG, "ask", QUESTION, "--config", str(path), "--stream"]
    env = {**os.environ, KEY_ENV: TOKEN}
    done = subprocess.run(args, capture_output=True, text=True, env=env, cwd="/", timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Paris" in done.stdout and "Cited: paris" in done.stdout


def test_techniques_a_server_cannot_run_are_refused(url: str) -> None:
    for params in (
        GenerationParams(keep_passages=1),  # choosing a passage needs the model's likelihoods
        GenerationParams(keep_passages=0, cad=ContextAwareDecoding(0.5)),
        GenerationParams(keep_passages=0, drafting=Drafting(8)),
        GenerationParams(keep_passages=0, parallel=ParallelContexts()),
        GenerationParams(keep_passages=0, require_citation=True),
    ):
        with pytest.raises(ConfigError, match="cannot run"):
            remote(url).stream(QUESTION, PASSAGES, params)


def test_a_wrong_key_is_named(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "wrong")
    with pytest.raises(RemoteError, match=f"refused the API key: set {KEY_ENV}"):
        remote(url).answer(QUESTION, PASSAGES)


def test_an_unknown_model_is_named(url: str) -> None:
    with pytest.raises(RemoteError, match="no model 'no-such-model'"):
        remote(url, model="no-such-model").answer(QUESTION, PASSAGES)


def test_no_server_and_a_silent_server_are_named() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # nothing listens once closed
    with pytest.raises(RemoteError, match="cannot reach the server"):
        remote(f"http://127.0.0.1:{port}/v1", max_retries=0).answer(QUESTION, PASSAGES)
    with socket.socket() as silent:  # accepts connections (the kernel's backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/v1"
        with pytest.raises(RemoteError, match="did not answer within 1 s"):
            remote(url, timeout_s=1, max_retries=1).answer(QUESTION, PASSAGES)


def test_bad_configs_fail_before_any_request() -> None:
    with pytest.raises(ConfigError, match="http"):
        OpenAICompatibleConfig(base_url="127.0.0.1:8080")
    with pytest.raises(ConfigError, match="timeout_s"):
        OpenAICompatibleConfig(base_url="http://x/v1", timeout_s=0)
    with pytest.raises(ConfigError, match="model is empty"):
        OpenAICompatibleConfig(base_url="http://x/v1", model=" ")
    with pytest.raises(ConfigError, match=r"option\(s\) \['server'\] must be given"):
        build("reranker", "listwise-remote", {})  # as `rag eval retrieval --reranker listwise-remote` does
    with pytest.raises(ConfigError, match="window must be at most 20"):
        build("reranker", "first-remote", {"server": {"base_url": "http://x/v1"}, "window": 21})


def test_serve_answers_through_a_remote_generator(server: RagServer, index_dir: Path, tmp_path: Path) -> None:
    """A second ``rag serve`` whose generator is the first: its answers are the remote's, cited."""
    remote_args = ["--base-url", f"{server.url}/v1", "--remote-model", MODEL]
    front = RagServer(
        {"tiny": index_dir},
        tmp_path / "front.log",
        *["--generator", "openai-compatible", *remote_args],
        env={"OPENAI_API_KEY": TOKEN},
    )
    try:
        with front.client() as client:
            request = {"collection": "tiny", "question": QUESTION, "k": 2, "max_tokens": 24}
            body = client.post("/v1/answer", json=request)
            messages = [{"role": "user", "content": QUESTION}]
            chat = client.post(
                "/v1/chat/completions", json={"model": "tiny", "messages": messages, "max_tokens": 24, "k": 2}
            )
    finally:
        front.stop()
    assert body.status_code == 200, body.text
    assert "Paris" in body.json()["answer"] and body.json()["citations"][0] == "paris"
    assert chat.status_code == 200, chat.text
    # the same question over the same k passages, greedy: the same prompt, the same answer
    assert chat.json()["choices"][0]["message"]["content"] == body.json()["answer"]


def ask_args(*flags: str) -> argparse.Namespace:
    return build_parser().parse_args(["ask", QUESTION, "--index", "x", *flags])


def test_cli_remote_flags_go_together() -> None:
    with pytest.raises(ConfigError, match="go with --generator openai-compatible"):
        build_generator(ask_args("--base-url", "http://127.0.0.1:1/v1"))
    with pytest.raises(ConfigError, match="needs --base-url"):
        build_generator(ask_args("--generator", "openai-compatible"))
    remote_flags = ("--generator", "openai-compatible", "--base-url", "http://127.0.0.1:1/v1")
    with pytest.raises(ConfigError, match="--precision: options of a local generator"):
        build_generator(ask_args(*remote_flags, "--precision", "exact"))
    assert generation_params(ask_args(*remote_flags)).keep_passages == 0  # all passages, remotely
    assert generation_params(ask_args()).keep_passages == 1


def test_cli_flags_given_override_a_configs_defaults() -> None:
    config_defaults = GenerationParams(max_new_tokens=24, temperature=0.7, keep_passages=0)
    params = generation_params(ask_args("--temperature", "0", "--draft-tokens", "8"), config_defaults)
    assert (params.temperature, params.drafting) == (0.0, Drafting(8))  # given
    assert (params.max_new_tokens, params.keep_passages) == (24, 0)  # the config's, not the CLI's defaults
    assert generation_params(ask_args()).max_new_tokens == 128  # no config: the command's default


def test_remote_listwise_ranks_as_the_local_listwise(url: str, local: CausalLMGenerator) -> None:
    docs = [Document(d["id"], d["text"], title=d["title"]) for d in DOCS]
    hits = [Hit(d.id, 1.0 - i / 10, i + 1, "dense") for i, d in enumerate(docs)]
    query = "Which drink is made from leaves?"
    windows = {"window": 3, "stride": 1}  # two windows over four candidates
    here = ListwiseReranker(
        ListwiseConfig(model=MODEL, **windows),
        model=local.model,
        tokenizer=local.tokenizer,
        docstore=MemoryDocs(docs),
    )
    server = {"base_url": url, "model": MODEL, "api_key_env": KEY_ENV}
    there = build("reranker", "listwise-remote", {"server": server, **windows})  # as in a pipeline config
    there.docstore = MemoryDocs(docs)  # as the pipeline sets it
    remote_hits = there.rerank(query, hits)
    assert [h.doc_id for h in remote_hits] == [h.doc_id for h in here.rerank(query, hits)]
    assert there.requests == 2  # one chat request per window
    assert {h.source for h in remote_hits} == {"listwise-remote"}


def test_server_gives_the_logprobs_of_a_plain_chat(server: RagServer) -> None:
    client = OpenAI(base_url=f"{server.url}/v1", api_key=TOKEN)
    messages = [{"role": "user", "content": "Name a colour."}]
    asked = {"model": MODEL, "messages": messages, "max_tokens": 4, "logprobs": True, "top_logprobs": 3}
    reply = client.chat.completions.create(**asked)  # type: ignore[call-overload]
    content = reply.choices[0].logprobs.content
    assert len(content) == reply.usage.completion_tokens
    for token in content:  # greedy: each token is the most likely one, and the first of its alternatives
        assert len(token.top_logprobs) == 3 and token.top_logprobs[0].token == token.token
        assert token.logprob <= 0 and token.logprob == pytest.approx(token.top_logprobs[0].logprob)
    chunks = list(client.chat.completions.create(**asked, stream=True))  # type: ignore[call-overload]
    with_logprobs = [c.choices[0].logprobs for c in chunks if c.choices and c.choices[0].logprobs]
    streamed = [t for logprobs in with_logprobs for t in logprobs.content]
    assert [t.token for t in streamed] == [t.token for t in content]
    with pytest.raises(UnprocessableEntityError, match="logprobs come with plain chats"):
        client.chat.completions.create(**(asked | {"model": "tiny"}))  # type: ignore[call-overload]


def test_remote_first_ranks_as_the_local_first(url: str, local: CausalLMGenerator) -> None:
    docs = [Document(d["id"], d["text"], title=d["title"]) for d in DOCS]
    hits = [Hit(d.id, 1.0 - i / 10, i + 1, "dense") for i, d in enumerate(docs)]
    shared = {"model": local.model, "tokenizer": local.tokenizer, "docstore": MemoryDocs(docs)}
    here = FirstReranker(ListwiseConfig(model=MODEL, window=4, stride=2), **shared)
    server = {"base_url": url, "model": MODEL, "api_key_env": KEY_ENV}
    there = build("reranker", "first-remote", {"server": server, "window": 4, "stride": 2})
    there.docstore = MemoryDocs(docs)
    for query in ("Which drink is made from leaves?", "What is the capital of Germany?", "Do cats purr?"):
        remote_hits = there.rerank(query, hits)
        assert [h.doc_id for h in remote_hits] == [h.doc_id for h in here.rerank(query, hits)], query
    assert there.requests == 3 and {h.source for h in remote_hits} == {"first-remote"}


def test_server_applies_logit_bias(server: RagServer) -> None:
    """OpenAI's logit_bias on a plain chat: +100 forces a token, -100 bans the one greedy decoding picks."""
    from rag.lm import load_tokenizer

    client = OpenAI(base_url=f"{server.url}/v1", api_key=TOKEN)
    asked = {"model": MODEL, "messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 1}
    asked |= {"logprobs": True, "top_logprobs": 2}
    greedy = client.chat.completions.create(**asked).choices[0].logprobs.content[0]  # type: ignore[call-overload]
    forced_id = load_tokenizer(MODEL).encode(" zebra", add_special_tokens=False)[0]
    forced = client.chat.completions.create(**asked, logit_bias={str(forced_id): 100})  # type: ignore[call-overload]
    assert forced.choices[0].logprobs.content[0].token == " zebra"
    banned_id = load_tokenizer(MODEL).encode(greedy.token, add_special_tokens=False)[0]
    banned = client.chat.completions.create(**asked, logit_bias={str(banned_id): -100})  # type: ignore[call-overload]
    assert banned.choices[0].logprobs.content[0].token == greedy.top_logprobs[1].token
    with pytest.raises(UnprocessableEntityError, match="logit_bias"):
        client.chat.completions.create(**asked, logit_bias={"x": 1})  # type: ignore[call-overload]


def test_remote_first_with_the_tokenizer_ranks_whole_windows_as_the_local_first(
    url: str, local: CausalLMGenerator
) -> None:
    """With the letters biased into the server's 20 alternatives, the whole order of a 12-passage window is
    the local FIRST's, not just its head."""
    docs = [
        Document(f"{d['id']}-{n}", f"{d['text']} Note {n}.", title=d["title"]) for n in range(3) for d in DOCS
    ]
    hits = [Hit(d.id, 1.0 - i / 20, i + 1, "dense") for i, d in enumerate(docs)]
    shared = {"model": local.model, "tokenizer": local.tokenizer, "docstore": MemoryDocs(docs)}
    here = FirstReranker(ListwiseConfig(model=MODEL, window=12, stride=6), **shared)
    server = {"base_url": url, "model": MODEL, "api_key_env": KEY_ENV}
    options = {"server": server, "window": 12, "stride": 6, "tokenizer": MODEL}
    there = build("reranker", "first-remote", options)
    there.docstore = MemoryDocs(docs)
    assert len(there.letter_ids) == 12
    for query in ("Which drink is made from leaves?", "What is the capital of Germany?"):
        remote_hits = there.rerank(query, hits)
        assert [h.doc_id for h in remote_hits] == [h.doc_id for h in here.rerank(query, hits)], query
