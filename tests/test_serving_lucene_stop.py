"""``rag serve`` over a Lucene (BM25) collection stops cleanly on SIGTERM and on Ctrl-C (SIGINT): the answer
streaming when the signal arrives runs to its end, uvicorn finishes its graceful shutdown, and the JVM neither
crashes (no fatal-error banner, no hs_err_pid*.log) nor ends the process from its own signal handler."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from processes import RagServer, write_corpus

from rag.collection import build_index

pytestmark = pytest.mark.slow  # a JVM and the bundled small LLM in a server process

DOCS = [
    {"id": "paris", "title": "France", "text": "Paris is the capital of France."},
    {"id": "rome", "title": "Italy", "text": "Rome is the capital of Italy."},
]
RAMBLE = "List every capital city of Europe, one per line."  # runs to max_tokens with SmolLM2


@pytest.fixture(scope="module")
def bm25_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("lucene-stop")
    build_index(write_corpus(folder / "c.jsonl", DOCS), folder / "c", name="bm25", kind="bm25")
    return folder / "c" / "bm25"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_lets_the_stream_finish_and_the_jvm_stop_cleanly(
    sig: signal.Signals, bm25_index: Path, tmp_path: Path
) -> None:
    extra = ["--generator", "smollm2-135m-instruct", "--threads", "1", "--log-level", "info"]
    server = RagServer({"c": bm25_index}, tmp_path / "serve.log", *extra, cwd=tmp_path)
    body = {"collection": "c", "question": RAMBLE, "max_tokens": 24, "stream": True}
    try:
        with server.client() as http, http.stream("POST", "/v1/answer", json=body) as r:
            lines = r.iter_lines()
            assert next(line for line in lines if line.startswith("event:")) == "event: token"
            server.process.send_signal(sig)  # mid-stream: the JVM has served the search
            rest = "\n".join(lines)
        code = server.process.wait(timeout=120)
    finally:
        if server.process.poll() is None:
            server.kill()
    log = server.log.read_text()
    assert "event: done" in rest, rest[-500:]  # the stream in flight ran to its end
    done = json.loads(rest.split("event: done\ndata: ")[1].split("\n")[0])
    assert done["timings"]["tokens"] >= 2 and done["passages"][0]["id"] in ("paris", "rome")
    assert code in (0, -sig), log[-2000:]  # uvicorn re-raises the signal it handled
    assert "Finished server process" in log and "Traceback" not in log, log[-2000:]
    assert "fatal error has been detected by the Java Runtime" not in log
    assert list(tmp_path.glob("hs_err_pid*.log")) == []
