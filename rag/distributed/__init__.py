"""Work spread over a Ray cluster: encoding a corpus for an index build (``rag index build --ray``)."""

from rag.distributed.ray_encoding import RayCluster, RayEncoded, encode_on_ray

__all__ = ["RayCluster", "RayEncoded", "encode_on_ray"]
