"""Request and response bodies of the REST API (pydantic); limits that depend on settings are checked in deps.

Unknown fields are refused (``extra="forbid"``) on ragloom's own requests so a typo is a 422, not a default;
the OpenAI-compatible request accepts and ignores the OpenAI fields ragloom does not use.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationInfo, field_validator

MAX_TEMPERATURE = 2.0  # as in OpenAI's API; sampling itself is safe for any finite value
SEED_MIN, SEED_MAX = -(2**53 - 1), 2**53 - 1  # JSON's safe integers: exact in every client's doubles


class _Request(BaseModel):
    """Numbers as JSON Schema types them: 3 and 3.0 are integers; "3" and true are not numbers."""

    @field_validator("*", mode="before")
    @classmethod
    def _numbers_are_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        annotation = cls.model_fields[info.field_name or ""].annotation
        numeric = {int, float} & {annotation, *get_args(annotation)}
        if numeric and isinstance(value, str | bool):
            raise ValueError("must be a JSON number, not a string or a boolean")
        return value


class _Strict(_Request):
    model_config = ConfigDict(extra="forbid")


class SearchRequest(_Strict):
    collection: str
    query: str = Field(min_length=1)
    k: int = Field(default=10, ge=1)


class Passage(BaseModel):
    id: str
    title: str
    text: str
    metadata: dict[str, Any] = Field(default_factory=dict)
    score: float | None = None
    rank: int | None = None


class SearchResponse(BaseModel):
    collection: str
    hits: list[Passage]
    took_s: float


class RerankDocument(_Strict):
    """A text to rerank, not read from the collection; its id defaults to its position ("0", "1", ...)."""

    text: str = Field(min_length=1)
    id: str | None = Field(default=None, min_length=1)
    title: str = ""


class RerankRequest(_Strict):
    collection: str
    query: str = Field(min_length=1)
    k: int = Field(default=10, ge=1, description="hits returned, best first")
    reranker: str | None = Field(
        default=None, description="listwise, first, icr or pointwise; default: the server's --reranker"
    )
    documents: list[str | RerankDocument] | None = Field(
        default=None,
        min_length=1,
        description="rerank these instead of a fresh search: a string is the id of a document of the "
        "collection, an object a text of your own",
    )
    fetch_k: int | None = Field(
        default=None, ge=1, description="hits retrieved and reranked when no documents are given"
    )


class RerankResponse(BaseModel):
    collection: str
    reranker: str
    hits: list[Passage]
    took_s: float


class AnswerRequest(_Strict):
    collection: str
    question: str = Field(min_length=1)
    k: int | None = Field(default=None, ge=1, description="passages given to the generator")
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=0.0, ge=0.0, le=MAX_TEMPERATURE, allow_inf_nan=False)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, allow_inf_nan=False)
    seed: int | None = Field(default=None, ge=SEED_MIN, le=SEED_MAX)
    stream: StrictBool = False


class TimingsOut(BaseModel):
    retrieve_s: float
    first_token_s: float  # from the start of generation to the first token
    generate_s: float  # from the start of generation to the last token
    tokens: int  # tokens generated (text pieces streamed may be fewer: some tokens complete one character)


class AnswerResponse(BaseModel):
    collection: str
    answer: str
    citations: list[str]
    passages: list[Passage]
    finish_reason: Literal["stop", "length"]
    timings: TimingsOut


class DocumentIn(_Strict):
    id: str = Field(min_length=1)
    text: str = Field(min_length=1)
    title: str = ""
    metadata: dict[str, Any] = Field(default_factory=dict)


class AddDocumentsRequest(_Strict):
    documents: list[DocumentIn] = Field(min_length=1)


class AddDocumentsResponse(BaseModel):
    collection: str
    added: int
    count: int


class DeleteDocumentResponse(BaseModel):
    collection: str
    deleted: str
    count: int


class CollectionInfo(BaseModel):
    name: str
    kind: str
    documents: int


class CollectionsResponse(BaseModel):
    collections: list[CollectionInfo]


class Health(BaseModel):
    status: Literal["ok"]
    collections: int
    unavailable: list[str] = Field(default_factory=list, description="collections that answer 503 (damaged)")
    generator: str | None
    in_flight: int


# --- OpenAI-compatible -------------------------------------------------------------------------------------


class ChatMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):  # [{"type": "text", "text": ...}, ...]
            return "".join(part.get("text", "") for part in self.content if part.get("type") == "text")
        return self.content or ""


class StreamOptions(BaseModel):
    include_usage: StrictBool = Field(default=False, description="send a last chunk with the request's usage")


class ChatCompletionRequest(_Request):
    model_config = ConfigDict(extra="allow")  # OpenAI fields ragloom ignores (user, stop, ...)

    model: str = Field(description="a collection name, or the generator's, as listed by GET /v1/models")
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=MAX_TEMPERATURE, allow_inf_nan=False)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0, allow_inf_nan=False)
    seed: int | None = Field(default=None, ge=SEED_MIN, le=SEED_MAX)
    n: int = Field(default=1, ge=1, le=1, description="only 1 is supported")
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    logprobs: StrictBool = Field(default=False, description="log-probabilities of the generated tokens")
    top_logprobs: int | None = Field(
        default=None, ge=0, le=20, description="with logprobs: the most likely tokens at each place"
    )
    logit_bias: dict[str, float] | None = Field(
        default=None,
        description="token id (a string of digits) -> bias in [-100, 100] added to its logit at every step; "
        "plain chats with the generator only",
    )
    k: int | None = Field(default=None, ge=1, description="ragloom extra: passages retrieved")


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "ragloom"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
