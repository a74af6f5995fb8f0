"""``rag index check``: is an index whole, and does it agree with its collection's docstore?

    >>> report = check_index("my-collection/dense")   # doctest: +SKIP
    >>> report.ok, report.problems                     # doctest: +SKIP
    (True, [])

It first finishes any commit a crashed writer left (as every open does) and reports the repair, then checks:
the manifest and the payload (loading it verifies the payload checksums and the document count), the docstore
file (SQLite ``quick_check``), that every id the index holds has its text in the docstore, and which docstore
rows no index of the collection holds (orphans: a warning, not a problem: a rebuild from a smaller corpus
leaves them, and no search returns them).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from rag.collection.commit import recover_index
from rag.docstore import Docstore
from rag.errors import RagError
from rag.indexes import Manifest, load_index
from rag.indexes.manifest import MANIFEST


@dataclass
class CheckReport:
    facts: list[str] = field(default_factory=list)  # what was found fine, or repaired
    warnings: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_index(index_dir: str | Path) -> CheckReport:
    index_dir = Path(index_dir)
    report = CheckReport()
    try:
        report.facts += recover_index(index_dir)
        manifest = Manifest.read(index_dir, verify=True)
        for part in index_dir.rglob(MANIFEST):  # the parts of a hybrid or PQ index
            Manifest.read(part.parent, verify=True)
    except RagError as error:
        report.problems.append(str(error))
        return report
    store_path = manifest.docstore_path(index_dir)
    store = _open_docstore(store_path, report)
    try:
        try:
            ids = load_index(index_dir).doc_ids()
        except RagError as error:
            report.problems.append(str(error))
            return report
        report.facts.append(f"{manifest.kind} index of {len(ids)} documents, payload intact")
        if store is not None:
            _compare(index_dir, ids, store, report)
    finally:
        if store is not None:
            store.close()
    return report


def _open_docstore(path: Path | None, report: CheckReport) -> Docstore | None:
    if path is None:
        report.warnings.append("the index records no docstore: searches return ids without texts")
        return None
    try:
        store = Docstore(path)
    except RagError as error:
        report.problems.append(str(error))
        return None
    verdict = store.quick_check()
    if verdict != "ok":
        report.problems.append(f"docstore {path} is damaged: {verdict}")
        store.close()
        return None
    return store


def _compare(index_dir: Path, ids: set[str], store: Docstore, report: CheckReport) -> None:
    try:
        stored = set(store.ids())
    except (RagError, sqlite3.DatabaseError) as error:
        report.problems.append(f"cannot read the docstore {store.path}: {error}")
        return
    missing = sorted(ids - stored)
    if missing:
        report.problems.append(
            f"{len(missing)} id(s) of the index have no text in the docstore: {', '.join(missing[:5])}"
        )
    else:
        report.facts.append(f"docstore {store.path} holds the text of every id of the index")
    held = set(ids)
    for other in _sibling_indexes(index_dir, store.path):
        try:
            held |= load_index(other).doc_ids()
        except RagError as error:
            report.warnings.append(f"could not read the sibling index {other}: {error}")
            return
    orphans = sorted(stored - held)
    if orphans:
        report.warnings.append(
            f"{len(orphans)} docstore row(s) that no index of the collection holds (never returned by "
            f"a search): {', '.join(orphans[:5])}"
        )


def _sibling_indexes(index_dir: Path, store_path: Path) -> list[Path]:
    """The other indexes of the collection folder that share this docstore."""
    folder = index_dir.resolve().parent
    found = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path == index_dir.resolve() or not (path / MANIFEST).is_file():
            continue
        try:
            if Manifest.read(path).docstore_path(path) == store_path.resolve():
                found.append(path)
        except RagError:
            continue
    return found
