"""A writer process killed with SIGKILL at each step of a commit (rebuild, add, delete): the next open finds
either the old or the new collection, whole (index ids = docstore ids, new texts, no leftover folders), and
``rag index check`` passes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from processes import write_corpus

from rag.collection import build_index
from rag.docstore import Docstore
from rag.index_check import check_index
from rag.indexes import load_index

pytestmark = pytest.mark.slow  # a process per case, each loading MiniLM

V1 = [{"id": f"d{i}", "text": f"Version one of document {i}, about rivers."} for i in range(6)]
V2 = [{"id": f"d{i}", "text": f"Version two of document {i}, about mountains."} for i in range(3, 9)]
NEW = [{"id": f"n{i}", "text": f"A new document {i}, about deserts."} for i in range(2)]

# The writer, in its own process; it SIGKILLs itself at the step named by argv[1].
WRITER = """
import json, os, shutil, signal, sys
from pathlib import Path

import rag.collection.commit as commit
from rag.docstore import Docstore

point, op, index_dir, arg = sys.argv[1:5]
index_dir = Path(index_dir)

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

def half_swap(work, target):  # the old index moved aside, the new one not yet in place
    target.rename(target.with_name(f".{target.name}.old-crash"))
    die()

if point == "in_transaction":
    Docstore.set_pending = die  # inside the SQLite transaction, after the docstore change, before COMMIT
elif point == "after_commit":
    commit.publish = die
elif point == "mid_swap":
    commit.publish = half_swap
elif point == "after_swap":
    Docstore.clear_pending = die

if op == "build":
    from rag.collection import build_index
    build_index(arg, index_dir.parent, name=index_dir.name, config={"show_progress": False})
else:
    from rag.collection.shared_index import SharedIndex
    from rag.types import Document
    index = SharedIndex(index_dir)
    if op == "add":
        index.add([Document(d["id"], d["text"]) for d in json.loads(arg)])
    else:
        index.delete(json.loads(arg))
"""


def state(index_dir: Path) -> tuple[set[str], dict[str, str]]:
    """(ids of the index, id -> text of the docstore)."""
    with Docstore(index_dir.parent / "docstore.sqlite") as store:
        texts = {d.id: d.text for d in store.iter_documents()}
    return load_index(index_dir).doc_ids(), texts


def expected(op: str) -> tuple[set[str], dict[str, str]]:
    old = {d["id"]: d["text"] for d in V1}
    if op == "build":  # upsert: V2's texts replace V1's; d0-d2 stay in the docstore, held by no index
        return {d["id"] for d in V2}, {**old, **{d["id"]: d["text"] for d in V2}}
    if op == "add":
        return set(old) | {d["id"] for d in NEW}, {**old, **{d["id"]: d["text"] for d in NEW}}
    kept = {k: v for k, v in old.items() if k not in ("d1", "d2")}
    return set(kept), kept


CASES = [
    ("build", "none"),
    ("build", "in_transaction"),
    ("build", "after_commit"),
    ("build", "mid_swap"),
    ("build", "after_swap"),
    ("delete", "in_transaction"),
    ("delete", "after_commit"),
    ("delete", "mid_swap"),
    ("delete", "after_swap"),
    ("add", "in_transaction"),
    ("add", "mid_swap"),
]


@pytest.mark.parametrize(("op", "point"), CASES, ids=[f"{o}-{p}" for o, p in CASES])
def test_a_writer_killed_at_any_step_leaves_the_old_or_the_new_collection(
    op: str, point: str, tmp_path: Path
) -> None:
    index_dir = tmp_path / "col" / "dense"
    build_index(write_corpus(tmp_path / "v1.jsonl", V1), index_dir.parent, config={"show_progress": False})
    old = state(index_dir)
    arg = {
        "build": str(write_corpus(tmp_path / "v2.jsonl", V2)),
        "add": json.dumps(NEW),
        "delete": json.dumps(["d1", "d2"]),
    }[op]
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    writer = subprocess.run(
        [sys.executable, str(script), point, op, str(index_dir), arg], cwd="/", capture_output=True, text=True
    )
    assert writer.returncode == (0 if point == "none" else -9), writer.stderr

    report = check_index(index_dir)  # the next open: finishes or drops the interrupted commit
    assert report.ok, report.problems
    assert [d.name for d in index_dir.parent.iterdir() if d.is_dir()] == ["dense"]  # no leftovers
    # before the commit point the old collection stays; after it the new one is completed
    assert state(index_dir) == (old if point == "in_transaction" else expected(op))
    if point in ("after_commit", "mid_swap"):
        assert any("finished the interrupted commit" in line for line in report.facts)
