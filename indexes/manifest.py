"""The on-disk index format: one directory per index with a ``manifest.json`` beside its payload files.

Indexes are written atomically: the payload goes to a temporary sibling directory, which then replaces the
old one, so a crash mid-build leaves the previous index intact.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rag.errors import IndexFormatError

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Manifest:
    kind: str  # registry name of the retriever
    config: dict[str, Any]  # the retriever's frozen config, as saved
    doc_count: int
    encoder: str = ""
    encoder_sha256: str = ""
    docstore: str = ""  # path of the collection's SQLite docstore, relative to the index directory
    build_seconds: float = 0.0
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    extra: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def write(self, directory: Path) -> None:
        (directory / MANIFEST).write_text(json.dumps(asdict(self), indent=2, sort_keys=True) + "\n")

    @classmethod
    def read(cls, directory: str | Path) -> Manifest:
        directory = Path(directory)
        path = directory / MANIFEST
        if not directory.is_dir():
            raise IndexFormatError(f"index not found: {directory}")
        if not path.is_file():
            raise IndexFormatError(f"{directory} is not a ragloom index: it has no {MANIFEST}")
        try:
            raw = json.loads(path.read_text())
            manifest = cls(**raw)
        except (json.JSONDecodeError, TypeError, UnicodeDecodeError) as error:
            raise IndexFormatError(f"corrupt manifest {path}: {error}") from None
        if manifest.format_version != FORMAT_VERSION:
            raise IndexFormatError(
                f"{path}: index format version {manifest.format_version}, this ragloom reads version "
                f"{FORMAT_VERSION}; rebuild the index with `rag index build`"
            )
        return manifest

    def docstore_path(self, directory: str | Path) -> Path | None:
        return (Path(directory) / self.docstore).resolve() if self.docstore else None


@contextmanager
def atomic_directory(target: str | Path) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``target`` only if the block finishes without error."""
    target = Path(target).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield work
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            target.rename(old)
        work.rename(target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)


def relative_docstore(index_dir: Path, docstore: Path | None) -> str:
    """The docstore path as the manifest records it: relative to the index directory."""
    if docstore is None:
        return ""
    return os.path.relpath(Path(docstore).resolve(), Path(index_dir).resolve())


def read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise IndexFormatError(f"index is missing {what}: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise IndexFormatError(f"corrupt {what} {path}: {error}") from None
