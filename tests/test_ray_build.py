"""`rag index build --ray` on a local two-node Ray cluster builds the index a single process builds."""

from __future__ import annotations

import json
import re
import subprocess

import faiss
import numpy as np
import pytest
from processes import RAG
from ray_cluster import ENV

from rag.collection import build_index
from rag.demo import corpus_path
from rag.errors import ConfigError
from rag.indexes import load_index
from rag.indexes.dense import DenseRetriever
from rag.indexes.manifest import MANIFEST

pytestmark = pytest.mark.slow

QUERIES = ["When was the Swiss Confederation founded?", "capital of Norway", "largest lake in Italy"]
BUILD_SECONDS = 600  # two encoder actors starting and encoding 82 passages, on two busy cores


@pytest.fixture(scope="module")
def single_process(tmp_path_factory) -> DenseRetriever:
    return build_index(corpus_path(), tmp_path_factory.mktemp("single"), config={"show_progress": False})


def ray_build(address: str, collection, *options: str) -> str:
    done = subprocess.run(
        [RAG, "-v", "index", "build", str(corpus_path()), str(collection), "--ray", address, *options],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=BUILD_SECONDS,
        cwd="/",  # Ray puts the driver's working directory on its workers' sys.path: not the checkout
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout + done.stderr


def stored_vectors(retriever: DenseRetriever) -> dict[str, np.ndarray]:
    flat = faiss.downcast_index(retriever.index.index)
    labels = faiss.vector_to_array(retriever.index.id_map)
    return dict(zip(retriever.ids_of_labels(labels), flat.reconstruct_n(0, flat.ntotal), strict=True))


def test_ray_build_equals_the_single_process_build(ray_cluster, single_process, tmp_path) -> None:
    log = ray_build(ray_cluster, tmp_path)
    # both node processes encoded: "encoded 82 documents on 2 Ray node(s): [41, 41]"
    match = re.search(r"encoded (\d+) documents on (\d+) Ray node\(s\): \[(\d+), (\d+)\]", log)
    assert match and match.group(1) == "82" and match.group(2) == "2", log[-3000:]
    assert int(match.group(3)) > 0 and int(match.group(4)) > 0
    built = load_index(tmp_path / "dense")
    assert isinstance(built, DenseRetriever)
    assert built._ids == single_process._ids  # same ids, in the same order
    ours, theirs = stored_vectors(built), stored_vectors(single_process)
    for doc_id, vector in theirs.items():
        np.testing.assert_allclose(ours[doc_id], vector, atol=1e-5)
    for a, b in zip(built.search(QUERIES, k=5), single_process.search(QUERIES, k=5), strict=True):
        assert [h.doc_id for h in a] == [h.doc_id for h in b]
    manifest = json.loads((tmp_path / "dense" / MANIFEST).read_text())
    assert manifest["kind"] == "dense" and manifest["doc_count"] == 82


def test_ray_build_of_a_sharded_index(ray_cluster, single_process, tmp_path) -> None:
    ray_build(ray_cluster, tmp_path, "--kind", "dense-sharded", "--set", "shards=3")
    sharded = load_index(tmp_path / "dense")
    assert [len(shard) for shard in sharded.shards] == [27, 28, 27]
    for a, b in zip(sharded.search(QUERIES, k=10), single_process.search(QUERIES, k=10), strict=True):
        assert [(h.doc_id, round(h.score, 5)) for h in a] == [(h.doc_id, round(h.score, 5)) for h in b]


def test_ray_encodes_dense_indexes_only(tmp_path) -> None:
    from rag.distributed import RayCluster

    with pytest.raises(ConfigError, match="--ray encodes dense indexes"):
        build_index(corpus_path(), tmp_path, kind="bm25", ray=RayCluster("127.0.0.1:1"))
