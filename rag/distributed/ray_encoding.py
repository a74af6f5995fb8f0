"""Encode a corpus on a Ray cluster: Ray Data hands batches of texts to a pool of encoder actors.

    >>> encoded = encode_on_ray(texts, DenseConfig(), RayCluster("auto"))  # doctest: +SKIP
    >>> encoded.vectors.shape, sorted(encoded.rows_per_node.values())  # doctest: +SKIP
    ((5183, 384), [2591, 2592])

Each actor loads the encoder once and encodes the batches it is given (``map_batches`` over an actor pool);
the driver puts the vectors back in corpus order. Only texts travel to the workers and vectors back, so no
shared file system is assumed: the driver writes and commits the index as a single-process build does,
under the collection's writer lock (``rag.collection.build_index``). Every worker reports the checksum of
the encoder it loaded, and a batch encoded by another encoder than the driver's is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from rag.errors import ConfigError, RemoteError
from rag.indexes.dense import DenseConfig, encoder_checksum


@dataclass(frozen=True)
class RayCluster:
    """Where and how wide to encode."""

    address: str = (
        "auto"  # "auto": the cluster `ray start` runs on this machine; "HOST:PORT"; "ray://HOST:PORT"
    )
    actors: int | None = None  # encoder actors; None: as many as the cluster's CPUs allow
    cpus_per_actor: float = 1.0  # torch in each actor runs this many threads
    batch_size: int = 256  # texts in one batch handed to an actor

    def __post_init__(self) -> None:
        if self.actors is not None and self.actors < 1:
            raise ConfigError(f"actors must be at least 1, got {self.actors}")
        if self.cpus_per_actor <= 0 or self.batch_size < 1:
            raise ConfigError("cpus_per_actor must be positive and batch_size at least 1")


class EncoderActor:
    """One encoder, loaded when the actor starts; called with a batch of ``row`` and ``text`` columns."""

    def __init__(self, config: dict[str, Any]) -> None:
        from rag.indexes.dense import DenseRetriever

        self.retriever = DenseRetriever(DenseConfig(**{**config, "show_progress": False}))
        self.checksum = encoder_checksum(self.retriever.config.encoder)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import ray

        vectors = self.retriever.encode_texts(batch["text"].tolist())  # [rows, dim]
        node = ray.get_runtime_context().get_node_id()
        return {
            "row": batch["row"],
            "vector": vectors,
            "encoder": np.full(len(vectors), self.checksum),
            "node": np.full(len(vectors), node),
        }


@dataclass
class RayEncoded:
    vectors: np.ndarray  # [texts, dim] float32, L2-normalised, in the order of the texts
    rows_per_node: dict[str, int]  # Ray node id -> texts its actors encoded


def encode_on_ray(texts: Sequence[str], config: DenseConfig, cluster: RayCluster) -> RayEncoded:
    """The vectors of ``texts`` by ``config``'s encoder, encoded on the cluster, and where each was made."""
    ray = _import_ray()
    started_here = not ray.is_initialized()
    if started_here:
        try:
            ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False)
        except (ConnectionError, RuntimeError) as error:
            raise RemoteError(f"cannot join the Ray cluster at {cluster.address!r}: {error}") from None
    try:
        return _encode(ray, texts, config, cluster)
    finally:
        if started_here:
            ray.shutdown()


def _encode(ray: Any, texts: Sequence[str], config: DenseConfig, cluster: RayCluster) -> RayEncoded:
    cpus = ray.cluster_resources().get("CPU", 1.0)
    actors = cluster.actors or max(1, int(cpus // cluster.cpus_per_actor))
    batches = 4 * actors  # at least this many batches, so that every actor gets work
    rows = ray.data.from_items(
        [{"row": i, "text": text} for i, text in enumerate(texts)],
        override_num_blocks=max(1, min(len(texts), batches)),
    )
    encoded = rows.map_batches(
        EncoderActor,
        fn_constructor_kwargs={"config": {f.name: getattr(config, f.name) for f in fields(DenseConfig)}},
        batch_size=max(1, min(cluster.batch_size, -(-len(texts) // batches))),
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=cluster.cpus_per_actor,
    )
    expected = encoder_checksum(config.encoder)
    vectors: np.ndarray | None = None
    seen = np.zeros(len(texts), dtype=bool)
    rows_per_node: dict[str, int] = {}
    for batch in encoded.iter_batches(batch_format="numpy", batch_size=None):
        others = set(batch["encoder"].tolist()) - {expected}
        if others:
            raise RemoteError(
                f"a Ray worker encoded with another {config.encoder!r} (sha256 {sorted(others)[0][:12]}…) "
                f"than this machine's ({expected[:12]}…); install the same encoder on every node"
            )
        if vectors is None:
            vectors = np.empty((len(texts), batch["vector"].shape[1]), dtype=np.float32)
        vectors[batch["row"]] = batch["vector"]
        seen[batch["row"]] = True
        for node in batch["node"].tolist():
            rows_per_node[node] = rows_per_node.get(node, 0) + 1
    if vectors is None or not seen.all():
        raise RemoteError(f"the Ray cluster returned {int(seen.sum())} of {len(texts)} vectors")
    return RayEncoded(vectors, rows_per_node)


def _import_ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError:
        raise ConfigError("encoding on Ray needs Ray Data: pip install 'ragloom[ray]'") from None
    return ray
