"""Locations ragloom reads from the environment, each with one default."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Where converted models and other derived files live (``RAG_CACHE_DIR``)."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ragloom"
    return Path(os.environ.get("RAG_CACHE_DIR", default))


def data_dir() -> Path:
    """Where the evaluation data sets live (``RAG_DATA_DIR``, default ``../shared/data``)."""
    default = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
    return Path(os.environ.get("RAG_DATA_DIR", default))
