"""The SQLite docstore: the text, title and metadata of every document of one collection.

One file per collection, shared by all of its indexes. Documents keep their insertion order (an
``AUTOINCREMENT`` row number, never reused after a delete). The file is in WAL mode, so several processes can
read while one writes; writers wait up to ``timeout`` seconds for each other.

    >>> import pathlib, tempfile
    >>> from rag.types import Document
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "docs.sqlite"
    >>> with Docstore.create(path) as store:
    ...     store.add([Document("d1", "Aspirin inhibits COX-1.", title="Aspirin")])
    1
    >>> with Docstore(path) as store:
    ...     store["d1"].title
    'Aspirin'

Errors: a missing, foreign or corrupt file raises :class:`~rag.errors.IndexFormatError`; a duplicate id in
:meth:`Docstore.add` raises :class:`~rag.errors.CorpusError`; :meth:`Docstore.get` and ``store[id]`` raise
``KeyError`` for ids that are not stored.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from itertools import islice
from pathlib import Path
from types import TracebackType

from rag.errors import CollectionBusyError, CorpusError, IndexFormatError
from rag.types import Document

FORMAT = "ragloom-docstore"
FORMAT_VERSION = 1
_PAGE = 500  # ids per SELECT ... IN (...) and rows per page when iterating; below SQLite's variable limit

_SCHEMA = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE documents (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- insertion order, never reused
        id TEXT NOT NULL UNIQUE,
        title TEXT NOT NULL,
        text TEXT NOT NULL,
        metadata TEXT NOT NULL  -- JSON object
    )""",
)


class Docstore:
    """Documents of one collection in one SQLite file; open an existing file, or :meth:`create` one."""

    def __init__(self, path: str | Path, *, timeout: float = 30.0) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise IndexFormatError(f"docstore not found: {self.path} (create it with Docstore.create)")
        self._lock = threading.RLock()  # one connection, shared by threads; one transaction at a time
        self._conn = _connect(self.path, timeout)
        try:
            self._check_format()
            self._conn.execute("PRAGMA synchronous=NORMAL")  # safe with WAL; durable at checkpoints
        except BaseException:
            self._conn.close()
            raise

    @classmethod
    def create(cls, path: str | Path, *, exist_ok: bool = False, timeout: float = 30.0) -> Docstore:
        """Create an empty docstore at ``path``; with ``exist_ok``, open it instead if it already exists."""
        path = Path(path)
        if path.exists() and not exist_ok:
            raise IndexFormatError(f"docstore already exists: {path}")
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = _connect(path, timeout)
        try:
            conn.execute("PRAGMA journal_mode=WAL")  # persistent: stored in the file
            conn.execute("BEGIN IMMEDIATE")
            if not conn.execute("SELECT 1 FROM sqlite_master").fetchone():  # an empty database: ours to fill
                for statement in _SCHEMA:
                    conn.execute(statement)
                conn.executemany(
                    "INSERT INTO meta VALUES (?, ?)", [("format", FORMAT), ("version", str(FORMAT_VERSION))]
                )
            conn.execute("COMMIT")
        except sqlite3.DatabaseError as e:
            raise IndexFormatError(f"{path} is not a ragloom docstore ({e})") from None
        finally:
            conn.close()
        return cls(path, timeout=timeout)

    # --- writing -------------------------------------------------------------------------------------------

    def add(self, docs: Iterable[Document], *, batch_size: int = 1000) -> int:
        """Add ``docs`` in one transaction and return how many were added.

        Either every document is added or none: an id already in the store, an id repeated in ``docs``,
        or any error while ``docs`` is consumed rolls the whole call back. ``batch_size`` bounds how many
        documents are held in memory at a time.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        docs = iter(docs)
        added: dict[str, int] = {}  # id -> position in docs, to name both positions of a duplicate
        with self._using(), self._transaction():
            while batch := list(islice(docs, batch_size)):
                rows = []
                for doc in batch:
                    if doc.id in added:
                        raise CorpusError(
                            f"duplicate document id {doc.id!r} at positions {added[doc.id]} and {len(added)} "
                            "of the documents added; nothing was added"
                        )
                    added[doc.id] = len(added)
                    rows.append((doc.id, doc.title, doc.text, _dump_metadata(doc)))
                stored = self._existing([row[0] for row in rows])
                if stored:
                    raise CorpusError(
                        f"document id {stored[0]!r} is already in the docstore {self.path}; nothing was added"
                    )
                self._conn.executemany(
                    "INSERT INTO documents (id, title, text, metadata) VALUES (?, ?, ?, ?)", rows
                )
        return len(added)

    def upsert(self, docs: Iterable[Document]) -> int:
        """Add ``docs``, replacing the title, text and metadata of ids already stored; one transaction.

        An id repeated in ``docs`` is refused (``CorpusError``) and nothing is written.
        """
        rows: dict[str, tuple[str, str, str, str]] = {}
        for doc in docs:
            if doc.id in rows:
                raise CorpusError(f"duplicate document id {doc.id!r} in the documents; nothing was written")
            rows[doc.id] = (doc.id, doc.title, doc.text, _dump_metadata(doc))
        with self._using(), self._transaction():
            self._conn.executemany(
                "INSERT INTO documents (id, title, text, metadata) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET title = excluded.title, text = excluded.text, "
                "metadata = excluded.metadata",
                list(rows.values()),
            )
        return len(rows)

    def delete(self, ids: Iterable[str]) -> int:
        """Delete the documents with these ids in one transaction; return how many were actually removed."""
        unique = list(dict.fromkeys(ids))
        with self._using(), self._transaction():
            cursor = self._conn.executemany("DELETE FROM documents WHERE id = ?", [(i,) for i in unique])
            return max(cursor.rowcount, 0)

    @contextmanager
    def write(self) -> Iterator[None]:
        """One transaction around several calls (``add``, ``upsert``, ``delete``, ``set_pending``...)."""
        with self._using(), self._transaction():
            yield

    # --- the pending-commit marker (see rag.collection.commit) ---------------------------------------------

    def set_pending(self, index: str, work: str) -> None:
        """Record, in the current transaction, that index folder ``index`` is to be replaced by ``work``."""
        with self._using(), self._transaction():
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS pending (index_name TEXT PRIMARY KEY, work TEXT NOT NULL)"
            )
            self._conn.execute("INSERT OR REPLACE INTO pending VALUES (?, ?)", (index, work))

    def clear_pending(self, index: str) -> None:
        with self._using(), self._transaction():
            if self._has_pending_table():
                self._conn.execute("DELETE FROM pending WHERE index_name = ?", (index,))

    def pending(self) -> dict[str, str]:
        """Index folder name -> staged folder name, for commits whose index swap may not have happened."""
        with self._using():
            if not self._has_pending_table():
                return {}
            return dict(self._conn.execute("SELECT index_name, work FROM pending").fetchall())

    def _has_pending_table(self) -> bool:
        query = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'pending'"
        return self._conn.execute(query).fetchone() is not None

    # --- reading -------------------------------------------------------------------------------------------

    def get(self, ids: Sequence[str]) -> list[Document]:
        """The documents with these ids, in the same order; raise ``KeyError`` naming any missing id."""
        found = self._fetch(ids)
        missing = [i for i in dict.fromkeys(ids) if i not in found]
        if missing:
            shown = ", ".join(map(repr, missing[:5])) + (" …" if len(missing) > 5 else "")
            raise KeyError(f"{len(missing)} document id(s) not in the docstore {self.path}: {shown}")
        return [found[i] for i in ids]

    def get_present(self, ids: Sequence[str]) -> list[Document]:
        """The documents with these ids that are stored, in the order of ``ids``; missing ids are skipped."""
        found = self._fetch(ids)
        return [found[i] for i in ids if i in found]

    def _fetch(self, ids: Sequence[str]) -> dict[str, Document]:
        if isinstance(ids, str):
            raise TypeError("Docstore.get takes a sequence of ids; use store[doc_id] for one")
        found: dict[str, Document] = {}
        with self._using():
            for start in range(0, len(ids), _PAGE):
                page = list(dict.fromkeys(ids[start : start + _PAGE]))
                rows = self._conn.execute(
                    "SELECT id, title, text, metadata FROM documents "
                    f"WHERE id IN ({', '.join('?' * len(page))})",
                    page,
                )
                found.update((row[0], _document(row)) for row in rows)
        return found

    def quick_check(self) -> str:
        """SQLite's ``PRAGMA quick_check``: ``"ok"``, or what is damaged (reads every page of the file)."""
        try:
            with self._lock:
                rows = self._conn.execute("PRAGMA quick_check").fetchall()
        except sqlite3.DatabaseError as error:
            return str(error)
        return "; ".join(str(r[0]) for r in rows[:5])

    def __getitem__(self, doc_id: str) -> Document:
        return self.get([doc_id])[0]

    def __contains__(self, doc_id: object) -> bool:
        if not isinstance(doc_id, str):
            return False
        with self._using():
            row = self._conn.execute("SELECT 1 FROM documents WHERE id = ?", (doc_id,)).fetchone()
        return row is not None

    def __len__(self) -> int:
        with self._using():
            return self._conn.execute("SELECT COUNT(*) FROM documents").fetchone()[0]

    def ids(self) -> Iterator[str]:
        """Every id, in insertion order."""
        for row in self._pages("id"):
            yield row[0]

    def iter_documents(self) -> Iterator[Document]:
        """Every document, in insertion order."""
        for row in self._pages("id, title, text, metadata"):
            yield _document(row)

    # --- lifetime ------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection; closing twice is fine."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Docstore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Docstore({str(self.path)!r})"

    # --- internals -----------------------------------------------------------------------------------------

    def _check_format(self) -> None:
        try:
            meta = dict(self._conn.execute("SELECT key, value FROM meta").fetchall())
            self._conn.execute("SELECT seq, id, title, text, metadata FROM documents LIMIT 0")
        except sqlite3.DatabaseError as e:  # garbage bytes, or a SQLite file without our tables
            raise IndexFormatError(f"{self.path} is not a ragloom docstore ({e})") from None
        if meta.get("format") != FORMAT:
            raise IndexFormatError(f"{self.path} is not a ragloom docstore (format {meta.get('format')!r})")
        if meta.get("version") != str(FORMAT_VERSION):
            raise IndexFormatError(
                f"{self.path} has docstore format version {meta.get('version')}; "
                f"this ragloom reads version {FORMAT_VERSION}"
            )

    @contextmanager
    def _using(self) -> Iterator[None]:
        """Hold the connection; SQLite's errors become ragloom's (a damaged file: ``IndexFormatError``)."""
        with self._lock:
            try:
                yield
            except sqlite3.ProgrammingError:  # a closed connection, a bad statement: a bug, not damage
                raise
            except sqlite3.IntegrityError as error:
                raise CorpusError(f"docstore {self.path}: {error}") from None
            except sqlite3.OperationalError as error:
                if "locked" in str(error) or "busy" in str(error):
                    raise CollectionBusyError(
                        f"docstore {self.path} is locked by another process ({error})"
                    ) from None
                raise IndexFormatError(
                    f"cannot read the docstore {self.path} ({error}); run `rag index check`"
                ) from None
            except sqlite3.DatabaseError as error:
                raise IndexFormatError(
                    f"the docstore {self.path} is damaged ({error}); restore it from a backup or rebuild "
                    "the collection (`rag index check` tells more)"
                ) from None

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """``BEGIN IMMEDIATE`` … ``COMMIT``, or ``ROLLBACK`` on any exception; joins one already open."""
        if self._conn.in_transaction:
            yield
            return
        self._conn.execute("BEGIN IMMEDIATE")  # take the write lock now, not at the first write
        try:
            yield
        except BaseException:
            with suppress(
                sqlite3.Error
            ):  # a damaged file may refuse the rollback too; the original error wins
                self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def _existing(self, ids: list[str]) -> list[str]:
        """Those of ``ids`` already stored (first match first)."""
        stored: set[str] = set()
        for start in range(0, len(ids), _PAGE):
            page = ids[start : start + _PAGE]
            query = f"SELECT id FROM documents WHERE id IN ({', '.join('?' * len(page))})"
            stored.update(row[0] for row in self._conn.execute(query, page))
        return [i for i in ids if i in stored]

    def _pages(self, columns: str) -> Iterator[tuple]:
        """Rows in insertion order, a page at a time, so no read stays open between pages."""
        last = 0
        while True:
            with self._using():
                rows = self._conn.execute(
                    f"SELECT seq, {columns} FROM documents WHERE seq > ? ORDER BY seq LIMIT ?", (last, _PAGE)
                ).fetchall()
            if not rows:
                return
            last = rows[-1][0]
            yield from (row[1:] for row in rows)


def _connect(path: Path, timeout: float) -> sqlite3.Connection:
    # isolation_level=None: no implicit transactions; Docstore._transaction opens and ends them.
    return sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)


def _dump_metadata(doc: Document) -> str:
    try:
        return json.dumps(doc.metadata, ensure_ascii=False)
    except (TypeError, ValueError) as e:
        raise CorpusError(f"metadata of document {doc.id!r} is not JSON-serialisable: {e}") from None


def _document(row: tuple[str, str, str, str]) -> Document:
    doc_id, title, text, metadata = row
    return Document(id=doc_id, text=text, title=title, metadata=json.loads(metadata))
