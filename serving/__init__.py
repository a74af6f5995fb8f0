"""REST serving: ``create_app(settings)`` (FastAPI), OpenAI-compatible routes, LangChain adapters.

The imports are lazy so that ``import rag.serving.settings`` does not pull in FastAPI.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ServeSettings", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from rag.serving.app import create_app

        return create_app
    if name == "ServeSettings":
        from rag.serving.settings import ServeSettings

        return ServeSettings
    raise AttributeError(name)
