"""The on-disk index format: one directory per index with a ``manifest.json`` beside its payload files.

Indexes are written atomically: the payload goes to a temporary sibling directory, which then replaces the
old one, so a crash mid-build leaves the previous index intact. The manifest records the sha256 of every
payload file (``rag.indexes.checksums``); reading a manifest verifies them once per process, unless
``RAG_VERIFY_INDEX=0``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from rag.errors import IndexFormatError
from rag.indexes.checksums import payload_checksums, verification_enabled, verify_payload

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
_VERIFIED: dict[str, tuple[int, int, int, int]] = {}  # index directory -> manifest file verified


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
    payload_sha256: dict[str, str] = field(default_factory=dict)  # filled by write(); empty: not verified

    def write(self, directory: Path) -> None:
        """Write the manifest last, with the checksums of the payload files already in ``directory``."""
        manifest = replace(self, payload_sha256=payload_checksums(directory))
        (directory / MANIFEST).write_text(json.dumps(asdict(manifest), indent=2, sort_keys=True) + "\n")

    @classmethod
    def read(cls, directory: str | Path, *, verify: bool | None = None) -> Manifest:
        """Read and check the manifest; verify the payload checksums (``verify=None``: unless
        ``RAG_VERIFY_INDEX=0``, and once per process and manifest version)."""
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
        if verify or (verify is None and verification_enabled()):
            key = _file_key(path)
            if verify or _VERIFIED.get(str(directory.resolve())) != key:
                verify_payload(directory, manifest.payload_sha256)
                _VERIFIED[str(directory.resolve())] = key
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


def _file_key(path: Path) -> tuple[int, int, int, int]:
    s = path.stat()
    return (s.st_dev, s.st_ino, s.st_mtime_ns, s.st_size)


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
