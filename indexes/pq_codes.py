"""The product quantiser inside a faiss PQ, OPQ+PQ or IVF-PQ index, as arrays, and back.

    >>> codes = read_codes(retriever.dense.index)        # doctest: +SKIP
    >>> codes.reconstruct().shape                        # [ntotal, dim]   # doctest: +SKIP
    (5183, 384)
    >>> write_centroids(retriever.dense.index, trained)  # searching now uses ``trained``   # doctest: +SKIP

faiss scores a query ``q`` against a stored vector as ``<T q, offset + concat_m C[m, code_m]>``: ``T`` is
OPQ's rotation (identity otherwise), ``offset`` the coarse centroid of the vector's inverted list (IVF-PQ,
which encodes residuals; zero otherwise) and ``C`` the ``[M, ksub, dsub]`` sub-quantizer centroids. JPQ tunes
the query encoder (so ``q``) and ``C``, and leaves the codes, the rotation and the coarse centroids alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np

from rag.errors import IndexFormatError


@dataclass(frozen=True)
class PQCodes:
    labels: np.ndarray  # [n] int64, the faiss label (DenseRetriever's id table row) of each stored vector
    codes: np.ndarray  # [n, M] int64, one centroid number per sub-quantizer
    centroids: np.ndarray  # [M, ksub, dsub] float32
    rotation: np.ndarray | None  # [d, d] float32: queries are searched as ``rotation @ q`` (OPQ)
    offsets: np.ndarray | None  # [n, d] float32: coarse centroid added to the decoded residual (IVF-PQ)

    def reconstruct(self, centroids: np.ndarray | None = None) -> np.ndarray:
        """[n, d] float32: the vectors the index scores queries against, from ``centroids`` if given."""
        c = self.centroids if centroids is None else centroids
        m = np.arange(c.shape[0])
        decoded = c[m, self.codes].reshape(len(self.codes), -1)  # [n, M, dsub] -> [n, d]
        return decoded if self.offsets is None else decoded + self.offsets


def _parts(index: faiss.Index) -> tuple[faiss.IndexIDMap2, np.ndarray | None, faiss.Index]:
    """(the id map, OPQ's rotation or None, the IndexPQ / IndexIVFPQ) of a PQRetriever's index."""
    outer = faiss.downcast_index(index)
    if not isinstance(outer, faiss.IndexIDMap2):
        raise IndexFormatError(f"expected a faiss IndexIDMap2, got {type(outer).__name__}")
    inner = faiss.downcast_index(outer.index)
    rotation = None
    if isinstance(inner, faiss.IndexPreTransform):
        if inner.chain.size() != 1:
            raise IndexFormatError("only one pre-transform (the OPQ rotation) is supported")
        transform = faiss.downcast_VectorTransform(inner.chain.at(0))
        if not isinstance(transform, faiss.LinearTransform) or transform.have_bias:
            raise IndexFormatError(f"unsupported pre-transform {type(transform).__name__}")
        rotation = faiss.vector_to_array(transform.A).reshape(transform.d_out, transform.d_in)
        inner = faiss.downcast_index(inner.index)
    if not isinstance(inner, (faiss.IndexPQ, faiss.IndexIVFPQ)):
        raise IndexFormatError(f"not a product-quantised index: {type(inner).__name__}")
    if not inner.is_trained:
        raise IndexFormatError("the product quantizer is not trained yet: add documents first")
    return outer, rotation, inner


def _unpack(packed: np.ndarray, m: int, nbits: int) -> np.ndarray:
    """[n, code_size] uint8 -> [n, m] int64; faiss packs the codes little-endian, ``nbits`` each."""
    if nbits == 8:
        return packed[:, :m].astype(np.int64)
    bits = np.unpackbits(packed, axis=1, bitorder="little")[:, : m * nbits].reshape(len(packed), m, nbits)
    return (bits.astype(np.int64) << np.arange(nbits)).sum(axis=2)


def read_codes(index: faiss.Index) -> PQCodes:
    """The codes, centroids, rotation and coarse offsets of every stored vector, in faiss' storage order."""
    outer, rotation, inner = _parts(index)
    pq = inner.pq
    id_map = faiss.vector_to_array(outer.id_map)  # [ntotal]: inner id -> label
    centroids = faiss.vector_to_array(pq.centroids).reshape(pq.M, pq.ksub, pq.dsub)
    if isinstance(inner, faiss.IndexPQ):
        packed = faiss.vector_to_array(inner.codes).reshape(inner.ntotal, pq.code_size)
        return PQCodes(id_map, _unpack(packed, pq.M, pq.nbits), centroids, rotation, None)
    if not inner.by_residual:
        raise IndexFormatError("IVF-PQ without residual encoding is not supported")
    coarse = inner.quantizer.reconstruct_n(0, inner.nlist)  # [nlist, d]
    lists = inner.invlists
    inner_ids, packed, list_numbers = [], [], []
    for list_no in range(inner.nlist):
        size = lists.list_size(list_no)
        if size == 0:
            continue
        inner_ids.append(faiss.rev_swig_ptr(lists.get_ids(list_no), size).copy())
        packed.append(faiss.rev_swig_ptr(lists.get_codes(list_no), size * lists.code_size).copy())
        list_numbers.append(np.full(size, list_no))
    if not inner_ids:
        return PQCodes(id_map[:0], np.zeros((0, pq.M), np.int64), centroids, rotation, coarse[:0])
    codes = np.concatenate(packed).reshape(-1, lists.code_size)
    inner_ids = np.concatenate(inner_ids)
    if inner_ids.max() >= len(id_map):
        # faiss' IndexIDMap2 compacts its id map on remove_ids, but IVF lists keep their old ids
        raise IndexFormatError("the IVF index's ids no longer match its id map after deletions; rebuild it")
    labels = id_map[inner_ids]  # what search reports for these entries
    offsets = coarse[np.concatenate(list_numbers)]
    return PQCodes(labels, _unpack(codes, pq.M, pq.nbits), centroids, rotation, offsets)


def write_centroids(index: faiss.Index, centroids: np.ndarray) -> None:
    """Replace the sub-quantizer centroids ([M, ksub, dsub]); the stored codes stay as they are."""
    _, _, inner = _parts(index)
    pq = inner.pq
    if centroids.shape != (pq.M, pq.ksub, pq.dsub):
        raise ValueError(f"expected centroids of shape {(pq.M, pq.ksub, pq.dsub)}, got {centroids.shape}")
    faiss.copy_array_to_vector(np.ascontiguousarray(centroids, dtype=np.float32).ravel(), pq.centroids)
    if pq.transposed_centroids.size():
        pq.sync_transposed_centroids()
    if isinstance(inner, faiss.IndexIVFPQ) and inner.precomputed_table.size():
        inner.precompute_table()
