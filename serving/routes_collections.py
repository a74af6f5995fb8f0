"""``GET /v1/collections``; add and delete documents of a live collection (index saved, no restart)."""

from __future__ import annotations

import anyio
from fastapi import APIRouter, HTTPException, status

from rag.serving.deps import ReadAuth, StateDep, WriteAuth, find_collection
from rag.serving.schemas import (
    AddDocumentsRequest,
    AddDocumentsResponse,
    CollectionInfo,
    CollectionsResponse,
    DeleteDocumentResponse,
)
from rag.types import Document

router = APIRouter(prefix="/v1/collections", tags=["collections"])


@router.get("", dependencies=[ReadAuth])
async def list_collections(state: StateDep) -> CollectionsResponse:
    return CollectionsResponse(
        collections=[
            CollectionInfo(name=c.name, kind=c.kind, documents=len(c)) for c in state.collections.values()
        ]
    )


@router.post("/{name}/documents", status_code=status.HTTP_201_CREATED, dependencies=[WriteAuth])
async def add_documents(name: str, body: AddDocumentsRequest, state: StateDep) -> AddDocumentsResponse:
    """Index and store the documents, then save the index; all or nothing (409 on an id already present)."""
    collection = find_collection(state, name)
    docs = [Document(id=d.id, text=d.text, title=d.title, metadata=d.metadata) for d in body.documents]
    added = await anyio.to_thread.run_sync(collection.add, docs)
    return AddDocumentsResponse(collection=name, added=added, count=len(collection))


@router.delete("/{name}/documents/{doc_id:path}", dependencies=[WriteAuth])
async def delete_document(name: str, doc_id: str, state: StateDep) -> DeleteDocumentResponse:
    """Delete one document; its id may contain ``/`` (as added), sent as is or as ``%2F``."""
    collection = find_collection(state, name)
    if not await anyio.to_thread.run_sync(collection.delete, [doc_id]):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"document {doc_id!r} is not in collection {name!r}")
    return DeleteDocumentResponse(collection=name, deleted=doc_id, count=len(collection))
