"""The knowledge API: ingest, search, list and delete documents of the shared corpora, over HTTP.

The same functions as `keel ingest` / `keel search` and the agent's retrieve node (memory.ingest,
memory.search). A corpus name always becomes the store namespace ("docs", name) / ("docs_meta", name), so
users' memories ("memories", user) and every other namespace are out of reach. Corpora are shared by all
users: anyone authenticated may search and list; ingest and delete need the role `admin` once API keys are
configured (with no keys, the single local user may do everything).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import ConfigDict, Field, ValidationError

from memory.ingest import DocumentError, delete_source, document_format, ingest_documents, list_sources
from memory.search import search_docs
from server import heap
from server.auth import CurrentUser, User
from server.deps import Service
from server.errors import ApiError
from server.schemas import AUTHENTICATED, _Body, errors
from server.serde import unstorable
from server.service import KeelService

router = APIRouter(
    prefix="/knowledge", tags=["knowledge"], dependencies=AUTHENTICATED, responses=errors(401, 422)
)

WRITER_ROLE = "admin"
# Corpus names the API accepts (no dots: the store joins namespace labels with ".").
CORPUS_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_SOURCE_CHARS = 512
MAX_DOCUMENTS = 1000
# Advisory-lock class for knowledge writes (two-key form: never collides with Keel's one-key locks).
_LOCK_CLASS = 0x6B6E6F77  # "know"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class _Strict(_Body):
    model_config = ConfigDict(extra="forbid")  # a misspelt field must not silently fall back to a default


class DocumentIn(_Strict):
    source: str = Field(
        ...,
        min_length=1,
        max_length=MAX_SOURCE_CHARS,
        description="label and citation name, e.g. guide/intro.md; its extension picks the format",
    )
    content: str = Field(..., description="the document: text, or base64 when encoding is base64 (PDFs)")
    encoding: Literal["utf-8", "base64"] = "utf-8"


class IngestBody(_Strict):
    namespace: str | None = Field(None, description="corpus; default KEEL_NAMESPACE")
    documents: list[DocumentIn] = Field(..., min_length=1, max_length=MAX_DOCUMENTS)
    prune: bool = Field(False, description="delete the corpus's documents that are not in this request")
    chunk_tokens: int = Field(200, ge=1, le=4096)
    overlap: int = Field(40, ge=0, le=4095)


class SearchBody(_Strict):
    query: str = Field(..., min_length=1, max_length=10_000)
    namespace: str | None = None
    k: int | None = Field(None, ge=1, le=100, description="default KEEL_RETRIEVE_K")
    mode: Literal["dense", "fts", "hybrid"] | None = Field(None, description="default: the project default")
    filter: dict[str, Any] | None = None


class DeleteSource(_Strict):
    namespace: str | None = None
    source: str = Field(..., min_length=1, max_length=4096)


def corpus(svc: KeelService, name: str | None) -> str:
    """The corpus a request names (or the configured default), validated."""
    if name is None:
        return svc.settings.keel_namespace
    if not isinstance(name, str) or not CORPUS_NAME.fullmatch(name):
        raise ApiError(422, f"Invalid namespace {name!r}: use 1-64 letters, digits, '_' or '-'")
    return name


async def knowledge_writer(request: Request, user: CurrentUser) -> User:
    """The caller, if they may change the knowledge base (403 otherwise)."""
    if request.app.state.keel.settings.api_users and WRITER_ROLE not in user.roles:
        raise ApiError(403, f"Changing the knowledge base needs the role '{WRITER_ROLE}'")
    return user


Writer = Annotated[User, Depends(knowledge_writer)]


@asynccontextmanager
async def corpus_write_lock(request: Request, svc: KeelService, name: str):
    """Serialise writes to a corpus: one at a time per process (waiters hold no connection), and across
    processes a Postgres advisory lock held in a transaction for the duration of the write."""
    state = request.app.state
    if getattr(state, "knowledge_lock", None) is None:
        state.knowledge_lock = asyncio.Lock()
    async with state.knowledge_lock, corpus_db_lock(svc.db.pool, name):
        yield


@asynccontextmanager
async def corpus_db_lock(pool, name: str):
    """The cross-process half: a Postgres advisory lock on the corpus, held in a transaction (`keel ingest`
    takes it too, so the CLI and the API never interleave writes to one corpus)."""
    async with pool.connection() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_LOCK_CLASS, name))
        yield


def _check_source(i: int, source: str) -> None:
    """Source names are labels (never opened as files), kept sane: relative, no '..', no control characters."""
    where = f"documents[{i}].source {source!r}"
    if _CONTROL.search(source):
        raise ApiError(422, f"Invalid {where}: control characters are not allowed")
    if source != source.strip():
        raise ApiError(422, f"Invalid {where}: leading or trailing whitespace")
    parts = source.replace("\\", "/").split("/")
    if source.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", source) or ".." in parts:
        raise ApiError(
            422, f"Invalid {where}: use a relative name such as guide/intro.md (no absolute path, no '..')"
        )
    try:
        document_format(source)
    except DocumentError as exc:
        raise ApiError(422, f"Invalid {where}: {exc.message}") from None


def _decode(i: int, doc: DocumentIn, fmt: str) -> bytes:
    if doc.encoding == "base64":
        try:
            return base64.b64decode("".join(doc.content.split()), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ApiError(
                422, f"Invalid documents[{i}].content ({doc.source}): not valid base64 ({exc})"
            ) from None
    if fmt == ".pdf":
        raise ApiError(
            422, f"Invalid documents[{i}] ({doc.source}): a PDF must be sent with encoding 'base64'"
        )
    return doc.content.encode("utf-8")  # check_input refused NUL and lone surrogates already


@router.post("/ingest", responses=errors(400, 403, 413))
async def ingest(body: IngestBody, request: Request, svc: Service, user: Writer) -> dict:
    """Chunk, embed and store documents in a corpus, idempotently (as `keel ingest`)."""
    name = corpus(svc, body.namespace)
    if body.overlap >= body.chunk_tokens:
        raise ApiError(
            422, f"overlap ({body.overlap}) must be smaller than chunk_tokens ({body.chunk_tokens})"
        )
    docs: list[tuple[str, bytes]] = []
    for i, doc in enumerate(
        body.documents
    ):  # a repeated source is refused by ingest_documents, before any write
        _check_source(i, doc.source)
        docs.append((doc.source, _decode(i, doc, document_format(doc.source))))
    async with corpus_write_lock(request, svc, name):
        try:
            # Every document is parsed and chunked before the first write: a bad one leaves the corpus as it was.
            report = await ingest_documents(
                svc.db.store,
                docs,
                namespace=name,
                max_tokens=body.chunk_tokens,
                overlap=body.overlap,
                prepare_all_first=True,
                prune=(lambda _source: True) if body.prune else None,
            )
        except DocumentError as exc:
            raise ApiError(422, f"Invalid document {exc.source!r}: {exc.message}") from None
        finally:
            await asyncio.to_thread(heap.trim)  # the embedding batches' buffers are free now (server/heap.py)
    return {"namespace": name, **report.to_dict(details=True)}


@router.post("/search", responses=errors(400, 413))
async def search(body: SearchBody, svc: Service, user: CurrentUser) -> list[dict[str, Any]]:
    """Top-k chunks of a corpus (as `keel search --json` and the retrieve node)."""
    name = corpus(svc, body.namespace)
    try:
        return await search_docs(
            svc.db.store,
            body.query,
            namespace=name,
            k=body.k or svc.settings.keel_retrieve_k,
            filter=body.filter,
            mode=body.mode,
        )
    except ValueError as exc:  # unsupported filter operator and the like
        raise ApiError(422, f"Invalid search: {exc}") from None


@router.get("/sources")
async def sources(svc: Service, user: CurrentUser, namespace: str | None = Query(None)) -> dict:
    """The documents of a corpus, from its manifest: source, chunks, file_hash, title, params, updated_at."""
    name = corpus(svc, namespace)
    return {"namespace": name, "sources": await list_sources(svc.db.store, namespace=name)}


async def _delete_request(
    request: Request, svc: KeelService, namespace: str | None, source: str | None
) -> DeleteSource:
    """The delete target from the query string, or else from a (small) JSON body."""
    if source is not None:
        try:
            return DeleteSource(namespace=namespace, source=source)
        except ValidationError as exc:
            raise ApiError(422, f"Invalid request: {exc.errors()[0]['msg']}") from None
    raw = b""
    limit = svc.settings.keel_max_body_bytes
    async for part in request.stream():  # BodyGuard does not see DELETE bodies: cap this one here
        raw += part
        if len(raw) > limit:
            raise ApiError(413, f"Request body too large (limit {limit} bytes)")
    if not raw.strip():
        raise ApiError(422, "Invalid request: source is required (query parameter or JSON body)")
    try:
        data = json.loads(raw)  # the parser FastAPI uses, so every body reads (and is checked) alike
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, f"Malformed JSON body: {exc}") from None
    if not isinstance(data, dict):
        raise ApiError(422, "Invalid request: the body must be a JSON object")
    problem = unstorable(data)  # this body is read here, not by FastAPI, so check_input did not see it
    if problem:
        raise ApiError(422, problem)
    if namespace is not None:
        data.setdefault("namespace", namespace)
    try:
        return DeleteSource.model_validate(data)
    except ValidationError as exc:
        parts = [f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors()[:5]]
        raise ApiError(422, "Invalid request: " + "; ".join(parts)) from None


@router.delete("/sources", responses=errors(400, 403, 404, 413))
async def delete(
    request: Request,
    svc: Service,
    user: Writer,
    namespace: str | None = Query(None),
    source: str | None = Query(None),
) -> dict:
    """Remove one document (its chunks and manifest entry) from a corpus; 404 when the corpus has no such source."""
    target = await _delete_request(request, svc, namespace, source)
    name = corpus(svc, target.namespace)
    if "\x00" in target.source:
        raise ApiError(422, "Invalid source: NUL is not allowed")
    async with corpus_write_lock(request, svc, name):
        removed = await delete_source(svc.db.store, namespace=name, source=target.source)
    if removed is None:
        raise ApiError(404, f"Source {target.source!r} not found in namespace {name!r}")
    return {"namespace": name, "source": target.source, "chunks_removed": removed}
