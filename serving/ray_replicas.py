"""``rag serve --ray ADDRESS --replicas N``: the same FastAPI app, N replicas behind Ray Serve's HTTP proxy.

Each replica is a Ray actor that builds :func:`~rag.serving.app.create_app` from the same settings and runs
its lifespan (loading the collections and the generator once); Ray Serve's proxy spreads requests among the
replicas and starts a new replica when one dies. The replicas share the collections on disk: every index
directory must be at the same path on every node (a shared file system, or one machine). Writes from several
replicas are safe as they are from several ``rag serve`` processes: each commit holds the collection's
writer lock and a search reloads an index another process changed (``rag.collection.shared_index``).

    >>> serve_on_ray(settings, address="auto", replicas=2)  # doctest: +SKIP
"""

from __future__ import annotations

import signal
import threading
from typing import Any

from rag.errors import ConfigError, RemoteError
from rag.serving.settings import ServeSettings

APP_NAME = "ragloom"


def serve_on_ray(settings: ServeSettings, *, address: str, replicas: int, replica_cpus: float = 1.0) -> None:
    """Deploy ``replicas`` replicas of the app on the cluster at ``address`` and serve until SIGINT or
    SIGTERM; then the app is taken down (each replica finishes its in-flight requests first)."""
    if replicas < 1:
        raise ConfigError(f"replicas must be at least 1, got {replicas}")
    ray, serve = _import_ray_serve()
    try:
        ray.init(address=address, logging_level="WARNING")
    except (ConnectionError, RuntimeError) as error:
        raise RemoteError(f"cannot join the Ray cluster at {address!r}: {error}") from None
    serve.start(http_options={"host": settings.host, "port": settings.port})
    replica = _deployment(serve).options(
        num_replicas=replicas,
        ray_actor_options={"num_cpus": replica_cpus},
        # a request waits in the proxy, not in a replica, once each replica has its gate full
        max_ongoing_requests=settings.model_concurrency + settings.queue_size,
        graceful_shutdown_timeout_s=settings.request_timeout_s + 1,
    )
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        serve.run(replica.bind(settings), name=APP_NAME, route_prefix="/")
        print(f"{replicas} replica(s) ready on http://{settings.host}:{settings.port}", flush=True)
        stop.wait()
    finally:
        serve.shutdown()
        ray.shutdown()


def _deployment(serve: Any) -> Any:
    """The Ray Serve deployment of the app (built here: the module imports without Ray installed)."""

    @serve.deployment(name="RagReplica")
    @serve.ingress()
    class RagReplica:
        def __init__(self, settings: ServeSettings) -> None:
            self.settings = settings

        def __serve_build_asgi_app__(self) -> Any:
            from rag.serving.app import create_app

            return create_app(self.settings)

    return RagReplica


def _import_ray_serve() -> tuple[Any, Any]:
    try:
        import ray
        from ray import serve
    except ImportError:
        raise ConfigError("serving on Ray needs Ray Serve: pip install 'ragloom[ray]'") from None
    return ray, serve
