"""sha256 checksums of an index's payload files, recorded in its manifest and verified when it is loaded.

    >>> import pathlib, tempfile
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "ids.json").write_text("[]")
    >>> sums = payload_checksums(folder)
    >>> verify_payload(folder, sums)  # passes; raises IndexFormatError once a byte changes

A sub-folder with its own ``manifest.json`` (a part of a hybrid index, the codes of a PQ index) is left to its
own manifest. Verification reads every payload byte once per process and manifest version; set
``RAG_VERIFY_INDEX=0`` to skip it for very large indexes (``rag index check`` always verifies).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from rag.errors import IndexFormatError

MANIFEST = "manifest.json"
ENV = "RAG_VERIFY_INDEX"


def verification_enabled() -> bool:
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no")


def payload_checksums(directory: Path) -> dict[str, str]:
    """Relative path -> sha256 of every payload file under ``directory`` (not manifests, not sub-indexes)."""
    return {str(path.relative_to(directory)): _sha256(path) for path in _payload_files(directory)}


def verify_payload(directory: Path, expected: dict[str, str]) -> None:
    """Raise ``IndexFormatError`` naming the first missing or changed payload file."""
    for rel, digest in sorted(expected.items()):
        path = directory / rel
        if not path.is_file():
            raise IndexFormatError(f"corrupt index {directory}: payload file {rel} is missing")
        if _sha256(path) != digest:
            raise IndexFormatError(
                f"corrupt index {directory}: {rel} does not match the checksum in its manifest (the file was "
                "changed or damaged after the index was built); rebuild the index"
            )


def _payload_files(directory: Path) -> list[Path]:
    files: list[Path] = []
    for entry in sorted(directory.iterdir()):
        if entry.is_dir():
            if not (entry / MANIFEST).is_file():
                files += _payload_files(entry)
        elif entry.name != MANIFEST and entry.name != "write.lock":  # Lucene's lock file is not payload
            files.append(entry)
    return files


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()
