"""Helpers for tests that run ragloom in real separate processes: ``rag`` commands and ``rag serve``."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx

RAG = str(Path(sys.executable).with_name("rag"))  # the console script of this environment
TOKEN = "process-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def write_corpus(path: Path, docs: Sequence[dict]) -> Path:
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    return path


def wait_for(predicate: Callable[[], bool], seconds: float = 120.0, every: float = 0.1) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rag(
    *args: str, stderr: Path | None = None, env: dict[str, str] | None = None, cwd: Path | str = "/"
) -> subprocess.Popen:
    """Start ``rag ARGS`` in its own process (stdout piped, stderr to a file when given).

    The working directory is never the checkout, whose kernels/ folder shadows a PyPI package.
    """
    err = open(stderr, "w") if stderr else subprocess.PIPE  # noqa: SIM115  (closed by the child's exit)
    return subprocess.Popen(
        [RAG, *args],
        stdout=subprocess.PIPE,
        stderr=err,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )


class RagServer:
    """``rag serve`` in its own process on a free loopback port; ``kill()`` is SIGKILL, ``stop()`` SIGTERM."""

    def __init__(
        self,
        collections: dict[str, Path],
        log: Path,
        *extra: str,
        env: dict[str, str] | None = None,
        cwd: Path | str = "/",
        token: str | None = TOKEN,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        args = ["serve", "--port", str(self.port), "--generator", "none", *extra]
        args += ["--token", token] if token else []
        for name, index in collections.items():
            args += ["--collection", f"{name}={index}"]
        self.process = rag(*args, stderr=log, env=env, cwd=cwd)
        if not wait_for(self._healthy, 240, 0.25):
            self.kill()
            raise RuntimeError(f"rag serve did not start:\n{log.read_text()}")

    def _healthy(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"rag serve exited with {self.process.returncode}:\n{self.log.read_text()}")
        try:
            return httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def client(self, timeout: float = 120) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=AUTH, timeout=timeout)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=60)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.process.send_signal(sig)
        return self.process.wait(timeout=120)
