"""Switch a loaded model's attention implementation for a block of calls, then restore it.

transformers' attention layers read ``config._attn_implementation`` at every forward, so one model can
prefill with SDPA and run a few rows with eager attention (which returns the weights) without reloading::

    >>> with attention_implementation(model, "eager"):  # doctest: +SKIP
    ...     out = model(input_ids=ids, cache=cache)

The setting lives on the model, so threads sharing one model must not run it during such a block (the
server's model gate runs one model call at a time with the default ``model_concurrency`` of 1).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def attention_implementation(model: Any, name: str) -> Iterator[None]:
    """Run the block with ``model``'s attention set to ``name`` ("eager", "sdpa", ...); restore it after."""
    config = model.config
    previous = config._attn_implementation
    config._attn_implementation = name
    try:
        yield
    finally:
        config._attn_implementation = previous
