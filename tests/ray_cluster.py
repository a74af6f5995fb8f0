"""A local Ray cluster for tests: a head and more node processes on loopback, started with `ray start`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from processes import free_port

RAY = str(Path(sys.executable).with_name("ray"))  # the console script of this environment
ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
START_SECONDS = 120  # a node process starting on a busy two-core machine


@contextmanager
def local_ray_cluster(nodes: int = 2, cpus_per_node: int = 1) -> Iterator[str]:
    """Yield the address ("127.0.0.1:PORT") of a cluster of ``nodes`` node processes; stop them after."""
    port = free_port()
    address = f"127.0.0.1:{port}"
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths live under it
    common = ["--num-cpus", str(cpus_per_node), "--node-ip-address", "127.0.0.1", "--disable-usage-stats"]
    try:
        _ray("start", "--head", "--port", str(port), "--include-dashboard=false", "--temp-dir", temp, *common)
        for _ in range(nodes - 1):
            _ray("start", "--address", address, *common)
        yield address
    finally:
        subprocess.run([RAY, "stop", "--force"], env=ENV, capture_output=True, timeout=START_SECONDS)
        shutil.rmtree(temp, ignore_errors=True)


def _ray(*args: str) -> None:
    done = subprocess.run([RAY, *args], env=ENV, capture_output=True, text=True, timeout=START_SECONDS)
    if done.returncode != 0:
        raise RuntimeError(f"ray {args[0]} failed ({done.returncode}): {done.stderr[-2000:]}")
