"""The OpenAPI schema as this server enforces it: the limits of its settings, and every status each route
returns with the body it returns then.

FastAPI's schema knows the pydantic models; the limits that depend on ``ServeSettings`` (``max_k``,
``max_passages``, ``max_tokens``, ``max_rerank``, ``max_query_chars``) are written into it here, and so are
the error statuses: ``ErrorResponse`` (``{"detail": "..."}``) and pydantic's ``HTTPValidationError`` on
ragloom's routes, ``OpenAIError`` on the OpenAI-compatible ones.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from rag.serving.errors import ErrorResponse, OpenAIError
from rag.serving.settings import ServeSettings

# schema -> field -> (JSON-schema keyword, setting); the routes check the same settings (rag.serving.deps)
LIMITS: dict[str, dict[str, tuple[str, str]]] = {
    "SearchRequest": {"k": ("maximum", "max_k"), "query": ("maxLength", "max_query_chars")},
    "RerankRequest": {
        "k": ("maximum", "max_k"),
        "fetch_k": ("maximum", "max_rerank"),
        "documents": ("maxItems", "max_rerank"),
        "query": ("maxLength", "max_query_chars"),
    },
    "AnswerRequest": {
        "k": ("maximum", "max_passages"),
        "max_tokens": ("maximum", "max_tokens"),
        "question": ("maxLength", "max_query_chars"),
    },
    "ChatCompletionRequest": {
        "k": ("maximum", "max_passages"),
        "max_tokens": ("maximum", "max_tokens"),
        "max_completion_tokens": ("maximum", "max_tokens"),
    },
}
# (path, method) -> the error statuses it returns
STATUSES: dict[tuple[str, str], tuple[int, ...]] = {
    ("/v1/search", "post"): (400, 401, 404, 413, 422, 503),
    ("/v1/rerank", "post"): (400, 401, 404, 413, 422, 503, 504),
    ("/v1/answer", "post"): (400, 401, 404, 413, 422, 503, 504),
    ("/v1/chat/completions", "post"): (400, 401, 404, 413, 422, 503, 504),
    ("/v1/models", "get"): (401,),
    ("/v1/models/{model_id}", "get"): (401, 404),
    ("/v1/collections", "get"): (401,),
    ("/v1/collections/{name}/documents", "post"): (400, 401, 403, 404, 409, 413, 422, 503),
    ("/v1/collections/{name}/documents/{doc_id}", "delete"): (401, 403, 404, 503),  # doc_id: any text
}
DESCRIPTIONS = {
    400: "a body that cannot be read (not UTF-8), or a request the model cannot serve (the prompt does not "
    "fit its context)",
    401: "a token is configured and the request has none or a wrong one",
    403: "writes are closed: the server has no token and open writes were not asked for",
    404: "unknown collection, model or document",
    409: "a document id the collection already holds",
    413: "the body, the query or the question is above its limit",
    422: "malformed JSON, a wrong type, an unknown field, or a value outside its limits",
    503: "the model queue is full (Retry-After), the server has no model for this, or the collection is "
    "damaged or locked by another writer",
    504: "the request took longer than request_timeout_s",
}


def install(app: FastAPI, settings: ServeSettings) -> None:
    """Make ``app.openapi()`` (and ``/openapi.json``, ``/docs``) return the schema described above."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in (ErrorResponse, OpenAIError):
                definition = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(definition.pop("$defs", {}))
                components[model.__name__] = definition
            _write_limits(components, settings)
            _write_statuses(schema["paths"])
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _write_limits(components: dict[str, Any], settings: ServeSettings) -> None:
    for name, fields in LIMITS.items():
        properties = components[name]["properties"]
        for field, (keyword, setting) in fields.items():
            prop = properties[field]
            kind = {"maximum": "integer", "maxLength": "string", "maxItems": "array"}[keyword]
            for branch in prop.get("anyOf", [prop]):
                if branch.get("type") == kind:
                    branch[keyword] = getattr(settings, setting)


def _write_statuses(paths: dict[str, Any]) -> None:
    for (path, method), statuses in STATUSES.items():
        operation = paths[path][method]
        openai = path.startswith(("/v1/chat", "/v1/models"))
        for status in statuses:
            if status == 422 and not openai and "422" in operation["responses"]:
                continue  # FastAPI's HTTPValidationError: pydantic's shape, which ragloom's own 422s share
            model = "OpenAIError" if openai else "ErrorResponse"
            operation["responses"][str(status)] = {
                "description": DESCRIPTIONS[status],
                "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model}"}}},
            }
