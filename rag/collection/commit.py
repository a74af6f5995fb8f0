"""Commit a change to one index of a collection and to its docstore as one step that no crash can split.

The order, with the collection's writer lock held throughout (``rag.collection.lock``):

1. **stage**: the changed index is saved into a fresh hidden sibling folder, ``.NAME.tmp-<hex>``;
2. **commit**: one SQLite transaction applies the docstore changes and records that folder as pending;
3. **publish**: the staged folder takes the place of ``NAME`` (the old folder is moved aside, then removed);
4. the pending record is deleted.

Step 2 is the commit point. A crash before it leaves the old index and the old docstore (and a staged folder,
a leftover); a crash after it leaves a pending record, and :func:`recover` (run by the next writer or reader
that opens the collection) finishes steps 3 and 4. :func:`recover` also puts back an index folder that a crash
left moved aside, and removes leftover ``.NAME.tmp-*`` / ``.NAME.old-*`` folders.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from rag.collection.lock import writer_lock
from rag.docstore import Docstore
from rag.errors import RagError
from rag.indexes.base import Retriever
from rag.indexes.manifest import MANIFEST, Manifest

log = logging.getLogger(__name__)
_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<what>tmp|old)-[^.]+$")

IndexKey = tuple[int, int, int, int] | None


def index_key(index_dir: str | Path) -> IndexKey:
    """Changes whenever the index folder is replaced (a save or a commit); None when there is no index."""
    try:
        s = os.stat(Path(index_dir) / MANIFEST)
    except FileNotFoundError:
        return None
    return (s.st_dev, s.st_ino, s.st_mtime_ns, s.st_size)


def stage(retriever: Retriever, index_dir: str | Path) -> Path:
    """Save ``retriever`` into a fresh hidden sibling of ``index_dir``; returns that folder."""
    index_dir = Path(index_dir).resolve()
    work = index_dir.with_name(f".{index_dir.name}.tmp-{uuid.uuid4().hex}")
    try:
        retriever.save(work)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return work


def commit(store: Docstore, index_dir: str | Path, work: Path, change: Callable[[], object]) -> None:
    """Apply ``change`` (docstore calls) and mark ``work`` pending in one transaction; publish ``work``."""
    index_dir = Path(index_dir).resolve()
    try:
        with store.write():
            change()
            store.set_pending(index_dir.name, work.name)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    publish(work, index_dir)
    store.clear_pending(index_dir.name)


def publish(work: Path, target: Path) -> None:
    """Put the folder ``work`` in the place of ``target`` (two renames; :func:`recover` repairs a crash)."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex}")
        target.rename(old)
    work.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def recover_index(index_dir: str | Path) -> list[str]:
    """:func:`recover` the collection of ``index_dir`` before anything reads it (the index folder may be the
    one a crash left moved aside); a no-op on a read-only collection."""
    folder = Path(index_dir).resolve().parent
    if not folder.is_dir():
        return []
    store_path = _docstore_path(Path(index_dir).resolve())
    try:
        with writer_lock(folder):
            if store_path is None or not store_path.is_file():
                return recover(folder, None)
            with Docstore(store_path) as store:
                return recover(folder, store)
    except PermissionError:  # nobody can write this collection, so nobody was interrupted writing it
        return []


def _docstore_path(index_dir: Path) -> Path | None:
    """The docstore recorded by the index, or by a staged or moved-aside copy of it."""
    folder, name = index_dir.parent, index_dir.name
    for candidate in [index_dir, *folder.glob(f".{name}.tmp-*"), *folder.glob(f".{name}.old-*")]:
        try:
            path = Manifest.read(candidate, verify=False).docstore_path(candidate)
        except RagError:
            continue
        if path is not None:
            return path
    return None


def recover(folder: str | Path, store: Docstore | None) -> list[str]:
    """Finish interrupted commits in a collection folder and remove leftovers (hold the writer lock).

    Returns a line per repair, for logs and ``rag index check``.
    """
    folder = Path(folder).resolve()
    done: list[str] = []
    for name, work_name in (store.pending() if store is not None else {}).items():
        work, target = folder / work_name, folder / name
        if work.is_dir():
            publish(work, target)
            done.append(f"finished the interrupted commit of {name}")
        store.clear_pending(name)  # type: ignore[union-attr]
    leftovers = [(p, m) for p in folder.iterdir() if p.is_dir() and (m := _LEFTOVER.match(p.name))]
    for path, match in leftovers:
        target = folder / match["name"]
        if match["what"] == "old" and not target.exists():
            path.rename(target)  # a crash between the two renames of a swap: the old folder comes back
            done.append(f"restored {target.name} from {path.name}")
        else:
            shutil.rmtree(path, ignore_errors=True)
            done.append(f"removed leftover {path.name}")
    for line in done:
        log.warning("%s: %s", folder, line)
    return done
