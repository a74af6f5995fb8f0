"""Prometheus metrics of one app, in a registry of its own (so several apps can live in one process).

>>> m = Metrics()
>>> m.requests.labels(route="/v1/search", method="POST", status="200").inc()
>>> b"ragloom_requests_total" in m.render()
True
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "ragloom_requests",
            "HTTP requests by route template and status",
            ("route", "method", "status"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "ragloom_request_seconds",
            "Request latency until the response (or stream) ended",
            ("route",),
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
        )
        self.generated = Counter(
            "ragloom_generated_tokens", "Answer tokens streamed to clients", registry=self.registry
        )
        self.rejected = Counter(
            "ragloom_queue_rejections",
            "Generations refused because the queue was full",
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "ragloom_generations_in_flight",
            "Generations running or waiting for the model",
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
