"""``rag bench``: named suites that measure ragloom against a baseline run beside it."""

from __future__ import annotations

from collections.abc import Callable

from rag.bench.report import SuiteResult


def _dense() -> Callable[..., SuiteResult]:
    from rag.bench.dense import run

    return run


def _serve() -> Callable[..., SuiteResult]:
    from rag.bench.serve import run

    return run


def _rerank() -> Callable[..., SuiteResult]:
    from rag.bench.rerank import run

    return run


def _kernels() -> Callable[..., SuiteResult]:
    from rag.bench.kernels import run

    return run


def _generate() -> Callable[..., SuiteResult]:
    from rag.bench.generate_report import run

    return run


def _retrieval() -> Callable[..., SuiteResult]:
    from rag.bench.retrieval import run

    return run


# suite name -> loader of the suite's run function (imported lazily: suites load models)
SUITES: dict[str, Callable[[], Callable[..., SuiteResult]]] = {
    "dense": _dense,
    "serve": _serve,
    "rerank": _rerank,
    "retrieval": _retrieval,
    "kernels": _kernels,
    "generate": _generate,
}
