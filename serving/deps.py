"""``Annotated`` dependencies: the shared state, bearer-token auth and per-request limit checks."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from rag.serving.errors import FieldError
from rag.serving.settings import ServeSettings
from rag.serving.state import ServedCollection, ServerState

_bearer = HTTPBearer(auto_error=False)


def get_state(request: Request) -> ServerState:
    return request.app.state.rag


StateDep = Annotated[ServerState, Depends(get_state)]


def _check_token(state: ServerState, credentials: HTTPAuthorizationCredentials | None) -> None:
    token = state.settings.api_token
    if token is None:
        return
    if credentials is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing bearer token: send 'Authorization: Bearer <token>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not secrets.compare_digest(credentials.credentials.encode(), token.encode()):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "wrong bearer token", headers={"WWW-Authenticate": "Bearer"}
        )


def require_read(
    state: StateDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """Reads need the token when one is set, unless ``public_reads``."""
    if not state.settings.public_reads:
        _check_token(state, credentials)


def require_write(
    state: StateDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """Writes need the token when one is set; with none, they are refused unless ``open_writes``."""
    if state.settings.api_token is None and not state.settings.open_writes:
        raise HTTPException(status.HTTP_403_FORBIDDEN, WRITES_CLOSED)
    _check_token(state, credentials)


WRITES_CLOSED = (
    "writes are closed: this server has no token; start it with --token (or RAG_API_TOKEN) to allow writes "
    "with that token, or with --open-writes (RAG_OPEN_WRITES=1) to let anyone add and delete documents"
)


ReadAuth = Depends(require_read)
WriteAuth = Depends(require_write)


def find_collection(state: ServerState, name: str) -> ServedCollection:
    if name in state.unavailable:
        why = state.unavailable[name]
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"collection {name!r} is unavailable: {why}")
    try:
        return state.collections[name]
    except KeyError:
        known = ", ".join(sorted(state.collections)) or "none"
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"unknown collection {name!r}; served: {known}"
        ) from None


def check_query(settings: ServeSettings, text: str, what: str = "query") -> None:
    if not text.strip():
        raise FieldError(what, f"the {what} is empty", text, "string_too_short")
    if len(text) > settings.max_query_chars:
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE,
            f"the {what} has {len(text)} characters; the limit is {settings.max_query_chars}",
        )


def check_at_most(value: int, limit: int, what: str) -> None:
    if value > limit:
        raise FieldError(what, f"{what}={value} is above the limit of {limit}", value, "less_than_equal")


def require_generator(state: ServerState) -> None:
    if state.generator is None:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, "this server was started without a generator (search only)"
        )
