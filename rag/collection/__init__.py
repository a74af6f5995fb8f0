"""Collections: a folder of indexes sharing one SQLite docstore, built, opened, searched and changed safely
from several processes.

- :class:`Collection` (``service``): one index and the docstore, the service every front end uses;
- :func:`build_index` (``build``): index a corpus into a collection;
- ``updates``, ``commit``, ``lock``: how a change becomes one atomic commit under the writer lock;
- ``shared_index``: reading an index while other processes commit.
"""

from rag.collection.build import DOCSTORE_FILE, RAY_KINDS, build_index
from rag.collection.service import Collection

__all__ = ["DOCSTORE_FILE", "RAY_KINDS", "Collection", "build_index"]
