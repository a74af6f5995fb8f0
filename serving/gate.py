"""A bounded queue in front of the model: a few generations run, a few wait, the rest are turned away.

>>> import asyncio
>>> gate = ModelGate(concurrency=1, queue_size=0)
>>> async def demo():
...     async with gate.slot():
...         return gate.in_flight
>>> asyncio.run(demo())
1
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class QueueFullError(Exception):
    """Every running slot and every waiting place is taken; the server answers 503 with Retry-After."""


class ModelGate:
    """``concurrency`` holders at once and at most ``queue_size`` waiting; the next one is refused at once."""

    def __init__(self, concurrency: int, queue_size: int) -> None:
        self.concurrency = concurrency
        self.capacity = concurrency + queue_size
        self.in_flight = 0  # running + waiting; only touched from the event loop thread
        self._semaphore = asyncio.Semaphore(concurrency)

    @property
    def full(self) -> bool:
        return self.in_flight >= self.capacity

    @asynccontextmanager
    async def slot(self, timeout: float | None = None) -> AsyncIterator[None]:
        """Hold a running slot; ``QueueFullError`` at once when full, ``TimeoutError`` after ``timeout``."""
        if self.full:
            raise QueueFullError(f"the model queue is full ({self.capacity} requests running or waiting)")
        self.in_flight += 1
        try:
            await asyncio.wait_for(self._semaphore.acquire(), timeout)
            try:
                yield
            finally:
                self._semaphore.release()
        finally:
            self.in_flight -= 1
