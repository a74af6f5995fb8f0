"""The `openai-compatible` generator against llama.cpp's own OpenAI server (llama-cpp-python[server], the
`bench` extra, built from source by `make bench`) serving the bundled SmolLM2 GGUF file on loopback."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from processes import free_port, wait_for
from test_serving_app import build_tiny_collection

from rag.generation.openai_compatible import OpenAICompatibleConfig, OpenAICompatibleGenerator
from rag.indexes import load_index
from rag.models import bundled_model
from rag.models.bundled import gguf_file
from rag.pipeline import Pipeline

pytest.importorskip("llama_cpp.server", reason="llama.cpp's server comes with the bench extra (make bench)")
pytestmark = pytest.mark.slow

MODEL = "smollm2-135m-instruct"
QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The base URL of llama.cpp's server on a free loopback port, serving SmolLM2 as ``MODEL``."""
    model = bundled_model(MODEL)
    assert model is not None
    gguf = gguf_file(model, tmp_path_factory.mktemp("gguf"))
    port = free_port()
    log = open(tmp_path_factory.mktemp("llama-log") / "server.log", "w")  # noqa: SIM115 (closed below)
    args = ["--model", str(gguf), "--model_alias", MODEL, "--host", "127.0.0.1", "--port", str(port)]
    args += ["--n_ctx", "2048", "--n_threads", "1"]
    server = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", *args], stdout=log, stderr=log, cwd="/"
    )
    url = f"http://127.0.0.1:{port}/v1"

    def ready() -> bool:
        if server.poll() is not None:
            raise RuntimeError(f"llama.cpp's server exited with {server.returncode}")
        try:
            return httpx.get(f"{url}/models", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        assert wait_for(ready, 240, 0.25), "llama.cpp's server did not start"
        yield url
    finally:
        server.terminate()
        server.wait(timeout=60)
        log.close()


def llama(url: str, model: str | None = MODEL) -> OpenAICompatibleGenerator:
    config = OpenAICompatibleConfig(base_url=url, model=model, api_key_env="RAG_TEST_NO_KEY")  # no key
    return OpenAICompatibleGenerator(config)


def test_pipeline_answers_through_llama_cpp_with_citations(llama_server: str, tmp_path: Path) -> None:
    pipeline = Pipeline(load_index(build_tiny_collection(tmp_path)), llama(llama_server), k=2)
    answer = pipeline.answer(QUESTION)
    assert "Paris" in answer.text and answer.citations[0] == "paris"
    stream = pipeline.stream(QUESTION)
    pieces = list(stream)
    assert len(pieces) > 1 and "".join(pieces) == stream.answer.text == answer.text  # greedy: the same
    assert stream.answer.citations == answer.citations and stream.answer.timings.new_tokens > 0


def test_llama_cpp_lists_the_model_and_takes_logit_bias(llama_server: str) -> None:
    from rag.generation.base import ChatParams
    from rag.lm import load_tokenizer

    generator = llama(llama_server)
    assert (
        OpenAICompatibleGenerator(
            OpenAICompatibleConfig(base_url=llama_server, model=None, api_key_env="RAG_TEST_NO_KEY")
        ).model
        == MODEL
    )  # the server's first (only) model
    forced = load_tokenizer(MODEL).encode(" zebra", add_special_tokens=False)[0]
    params = ChatParams(max_new_tokens=1, logit_bias=((forced, 100.0),))
    reply = generator.chat([{"role": "user", "content": "Name a colour."}], params).read_to_end()
    assert reply.text == "zebra"
