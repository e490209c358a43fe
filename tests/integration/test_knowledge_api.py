"""The knowledge API (/knowledge/...) in-process over the real database: ingest, search, sources, auth, 4xx."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import uuid

import pytest

from memory.ingest import ingest_paths
from server.service import KeelService
from server.settings import Settings
from tests.support.documents import tiny_pdf
from tests.support.inprocess import api_client

ADMIN, BOB, CAROL = {"x-api-key": "ka"}, {"authorization": "Bearer kb"}, {"x-api-key": "kc"}
LIMIT = 200_000

OPS = """# Operations

## Scaling out

To handle more load, scale out by starting additional worker processes. Each worker claims pending runs
from the queue in Postgres with SELECT ... FOR UPDATE SKIP LOCKED, so workers never run the same run twice.

## Connection pools

Every process keeps a small pool of Postgres connections. Size the pool to the number of concurrent runs
plus two, and keep the total across all processes below max_connections.
"""

LIGHTHOUSE = """<html><head><title>Lighthouse</title><style>p {color: red}</style></head><body>
<h1>Lighthouse keeping</h1>
<h2>Lenses</h2>
<p>The keeper polishes the Fresnel lens every morning at dawn.</p>
<script>var secret = "never indexed";</script>
</body></html>"""


PDF = tiny_pdf("Tide tables\n\nThe harbour master publishes tide tables every Sunday morning.")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def docs(*names: str, ops: str = OPS) -> list[dict]:
    every = {
        "guide/ops.md": {"source": "guide/ops.md", "content": ops},
        "site/lighthouse.html": {"source": "site/lighthouse.html", "content": LIGHTHOUSE},
        "tides.pdf": {"source": "tides.pdf", "content": b64(PDF), "encoding": "base64"},
    }
    return [every[n] for n in names or every]


@pytest.fixture(scope="module")
async def svc(db):
    """Keys configured: alice is admin, bob has no role, carol has another role."""
    return KeelService(
        Settings(keel_api_keys="ka:alice:admin,kb:bob,kc:carol:support+billing", keel_max_body_bytes=LIMIT),
        db,
    )


@pytest.fixture(scope="module")
async def client(svc):
    async with api_client(svc) as c:
        yield c


@pytest.fixture(scope="module")
async def local(db):
    """No keys configured: the single local user may write."""
    async with api_client(KeelService(Settings(keel_api_keys="", keel_max_body_bytes=LIMIT), db)) as c:
        yield c


async def store_state(db) -> tuple[int, object]:
    """Rows and the newest write time of the whole store (chunks, manifests, memories)."""
    async with db.pool.connection() as conn:
        row = await (await conn.execute("SELECT count(*) AS n, max(updated_at) AS t FROM store")).fetchone()
    return row["n"], row["t"]


async def ingest(client, namespace: str, documents: list[dict], headers=ADMIN, **extra) -> dict:
    r = await client.post(
        "/knowledge/ingest", json={"namespace": namespace, "documents": documents, **extra}, headers=headers
    )
    assert r.status_code == 200, r.text
    return r.json()


async def search(client, namespace: str, query: str, headers=ADMIN, **extra) -> list[dict]:
    r = await client.post(
        "/knowledge/search", json={"namespace": namespace, "query": query, **extra}, headers=headers
    )
    assert r.status_code == 200, r.text
    return r.json()


async def sources(client, namespace: str, headers=ADMIN) -> dict[str, dict]:
    r = await client.get("/knowledge/sources", params={"namespace": namespace}, headers=headers)
    assert r.status_code == 200, r.text
    return {s["source"]: s for s in r.json()["sources"]}


async def test_ingest_md_html_pdf_then_search(client):
    report = await ingest(client, "kb-main", docs())
    assert report["namespace"] == "kb-main"
    assert (report["files"], report["skipped"], report["removed"]) == (3, 0, 0) and report["chunks"] >= 3
    assert {d["source"]: d["status"] for d in report["documents"]} == {
        "guide/ops.md": "added",
        "site/lighthouse.html": "added",
        "tides.pdf": "added",
    }
    assert isinstance(report["seconds"], float)

    hit = (await search(client, "kb-main", "how do I scale out workers?", k=1))[0]
    assert hit["source"] == "guide/ops.md" and hit["heading"] == "Operations > Scaling out"
    assert "SKIP LOCKED" in hit["text"] and isinstance(hit["score"], float)
    lens = (await search(client, "kb-main", "how often is the lens polished", k=1, headers=BOB))[0]
    assert lens["source"] == "site/lighthouse.html" and "Fresnel" in lens["text"]
    assert lens["heading"].endswith("Lenses") and "secret" not in lens["text"]
    tide = await search(client, "kb-main", "when are tide tables published", k=1, mode="hybrid")
    assert tide[0]["source"] == "tides.pdf" and "Sunday" in tide[0]["text"]
    fts = await search(
        client, "kb-main", "Fresnel lens", mode="fts", filter={"source": "site/lighthouse.html"}
    )
    assert fts and {h["source"] for h in fts} == {"site/lighthouse.html"}
    assert await search(client, "kb-main", "workers", filter={"source": "nope.md"}) == []
    assert await search(client, "kb-other", "workers") == []  # another corpus sees nothing

    listed = await sources(client, "kb-main", headers=CAROL)
    assert set(listed) == {"guide/ops.md", "site/lighthouse.html", "tides.pdf"}
    ops = listed["guide/ops.md"]
    assert ops["file_hash"] == hashlib.sha256(OPS.encode()).hexdigest()
    assert ops["chunks"] == next(d["chunks"] for d in report["documents"] if d["source"] == "guide/ops.md")
    assert ops["title"] == "Operations" and ops["params"] == {"max_tokens": 200, "overlap": 40}


async def test_reingest_writes_nothing_and_change_replaces(client, db):
    await ingest(client, "kb-idem", docs())
    before = await store_state(db)
    again = await ingest(client, "kb-idem", docs())
    assert (again["files"], again["chunks"], again["skipped"]) == (3, 0, 3)
    assert {d["status"] for d in again["documents"]} == {"unchanged"}
    assert await store_state(db) == before, "an unchanged re-ingest must write nothing"

    changed = OPS.replace("SELECT ... FOR UPDATE SKIP LOCKED", "a raspberry pi in the garden shed")
    report = await ingest(client, "kb-idem", docs("guide/ops.md", ops=changed))
    assert (report["files"], report["skipped"]) == (1, 0) and report["documents"][0]["status"] == "replaced"
    assert all(
        "SKIP LOCKED" not in h["text"] for h in await search(client, "kb-idem", "SKIP LOCKED queue", k=10)
    )
    assert (await search(client, "kb-idem", "raspberry pi shed", k=1))[0]["source"] == "guide/ops.md"
    assert (await sources(client, "kb-idem"))["guide/ops.md"]["file_hash"] == hashlib.sha256(
        changed.encode()
    ).hexdigest()

    # A shorter version drops the old chunks beyond its length.
    short = "# Operations\n\nOne line only."
    await ingest(client, "kb-idem", docs("guide/ops.md", ops=short))
    hits = await search(client, "kb-idem", "operations", k=20, filter={"source": "guide/ops.md"})
    assert [h["text"] for h in hits] == [short] and (await sources(client, "kb-idem"))["guide/ops.md"][
        "chunks"
    ] == 1


async def test_same_content_as_the_cli_is_skipped(client, tmp_path, db):
    """One ingest function: a document ingested by `keel ingest` and re-sent through the API writes nothing."""
    (tmp_path / "guide").mkdir()
    (tmp_path / "guide" / "ops.md").write_text(OPS)
    (tmp_path / "tides.pdf").write_bytes(PDF)
    cli = await ingest_paths(db.store, [tmp_path], namespace="kb-cli", root=tmp_path)
    assert cli.files == 2 and cli.chunks > 0
    report = await ingest(client, "kb-cli", docs("guide/ops.md", "tides.pdf"))
    assert (report["chunks"], report["skipped"]) == (0, 2)


async def test_prune_removes_sources_not_in_the_request(client):
    await ingest(client, "kb-prune", docs())
    kept = await ingest(client, "kb-prune", docs("tides.pdf"))
    assert kept["removed"] == 0 and len(await sources(client, "kb-prune")) == 3
    report = await ingest(client, "kb-prune", docs("tides.pdf"), prune=True)
    assert (report["files"], report["skipped"], report["removed"]) == (1, 1, 2)
    assert sorted(report["removed_sources"]) == ["guide/ops.md", "site/lighthouse.html"]
    assert set(await sources(client, "kb-prune")) == {"tides.pdf"}
    assert (
        await search(client, "kb-prune", "scale out workers", k=10, filter={"source": "guide/ops.md"}) == []
    )
    assert (await search(client, "kb-prune", "tide tables", k=1))[0]["source"] == "tides.pdf"


async def test_delete_source_by_body_or_query(client, db):
    await ingest(client, "kb-del", docs())
    r = await client.request(
        "DELETE", "/knowledge/sources", json={"namespace": "kb-del", "source": "guide/ops.md"}, headers=ADMIN
    )
    assert r.status_code == 200, r.text
    assert r.json()["source"] == "guide/ops.md" and r.json()["chunks_removed"] >= 1
    assert set(await sources(client, "kb-del")) == {"site/lighthouse.html", "tides.pdf"}
    assert await search(client, "kb-del", "scale out workers", k=10, filter={"source": "guide/ops.md"}) == []
    r = await client.delete(
        "/knowledge/sources", params={"namespace": "kb-del", "source": "tides.pdf"}, headers=ADMIN
    )
    assert r.status_code == 200 and set(await sources(client, "kb-del")) == {"site/lighthouse.html"}

    before = await store_state(db)
    for params in (
        {"namespace": "kb-del", "source": "guide/ops.md"},
        {"namespace": "kb-none", "source": "x.md"},
    ):
        r = await client.delete("/knowledge/sources", params=params, headers=ADMIN)
        assert r.status_code == 404 and r.json() == {
            "detail": f"Source {params['source']!r} not found in namespace {params['namespace']!r}"
        }
    assert await store_state(db) == before


async def test_concurrent_writes_to_one_corpus_stay_consistent(client, db):
    """Writes to a corpus are serialised: the chunks always belong to the version the manifest records."""
    versions = [OPS.replace("Scaling out", f"Scaling out, take {i}") * (1 + i % 3) for i in range(4)]
    replies = await asyncio.gather(
        *(
            client.post(
                "/knowledge/ingest",
                json={"namespace": "kb-race", "documents": docs("guide/ops.md", ops=v)},
                headers=ADMIN,
            )
            for v in versions
        )
    )
    assert [r.status_code for r in replies] == [200] * 4
    manifest = (await sources(client, "kb-race"))["guide/ops.md"]
    chunks = await db.store.asearch(("docs", "kb-race"), filter={"source": "guide/ops.md"}, limit=100)
    assert len(chunks) == manifest["chunks"]
    assert {c.value["file_hash"] for c in chunks} == {manifest["file_hash"]}


async def test_writes_need_admin_when_keys_are_configured(client, db):
    body = {"namespace": "kb-auth", "documents": docs("guide/ops.md")}
    before = await store_state(db)
    for headers, status in (({}, 401), ({"x-api-key": "wrong"}, 401), (BOB, 403), (CAROL, 403)):
        r = await client.post("/knowledge/ingest", json=body, headers=headers)
        assert r.status_code == status and isinstance(r.json()["detail"], str), r.text
        r = await client.delete(
            "/knowledge/sources", params={"namespace": "kb-auth", "source": "guide/ops.md"}, headers=headers
        )
        assert r.status_code == status, r.text
    assert (await client.post("/knowledge/ingest", json=body, headers=BOB)).json() == {
        "detail": "Changing the knowledge base needs the role 'admin'"
    }
    # 403 comes before any validation of the body: a non-admin learns nothing about it.
    r = await client.post("/knowledge/ingest", json={"documents": []}, headers=BOB)
    assert r.status_code == 403
    assert await store_state(db) == before

    # Reading is for any authenticated caller, and for nobody else.
    assert (
        await client.post("/knowledge/search", json={"query": "x", "namespace": "kb-auth"})
    ).status_code == 401
    assert (await client.get("/knowledge/sources", params={"namespace": "kb-auth"})).status_code == 401
    await ingest(client, "kb-auth", docs("guide/ops.md"))
    assert set(await sources(client, "kb-auth", headers=BOB)) == {"guide/ops.md"}
    assert (await search(client, "kb-auth", "scale out", k=1, headers=BOB))[0]["source"] == "guide/ops.md"


async def test_without_keys_the_local_user_may_write(local):
    report = await ingest(local, "kb-local", docs("guide/ops.md"), headers={})
    assert report["files"] == 1
    r = await local.delete("/knowledge/sources", params={"namespace": "kb-local", "source": "guide/ops.md"})
    assert r.status_code == 200
    assert (await local.get("/knowledge/sources", params={"namespace": "kb-local"})).json()["sources"] == []


async def test_default_namespace_is_the_configured_corpus(client, svc):
    name = svc.settings.keel_namespace
    r = await client.post("/knowledge/search", json={"query": "anything"}, headers=ADMIN)
    assert r.status_code == 200
    r = await client.get("/knowledge/sources", headers=ADMIN)
    assert r.status_code == 200 and r.json()["namespace"] == name


async def test_user_memories_are_unreachable(client, db):
    secret = f"alice's locker combination is {uuid.uuid4().hex}"
    await db.store.aput(("memories", "alice"), "m1", {"text": secret})
    await db.store.aput(("memories", "alice"), "notes.md", {"text": secret, "source": "notes.md"})
    before = await store_state(db)

    for ns in ("memories", "alice", "docs", "docs_meta"):
        for mode in ("dense", "fts", "hybrid"):
            hits = await search(client, ns, "locker combination", k=20, mode=mode)
            assert all(secret not in h["text"] for h in hits)
        assert await sources(client, ns) == {}
        for source in ("m1", "notes.md"):
            r = await client.delete(
                "/knowledge/sources", params={"namespace": ns, "source": source}, headers=ADMIN
            )
            assert r.status_code == 404
    for bad in ("memories.alice", "memories/alice", "../memories", "", "a" * 65, "docs.x", "a b", "é"):
        for r in (
            await client.post("/knowledge/search", json={"namespace": bad, "query": "locker"}, headers=ADMIN),
            await client.get("/knowledge/sources", params={"namespace": bad}, headers=ADMIN),
            await client.delete(
                "/knowledge/sources", params={"namespace": bad, "source": "m1"}, headers=ADMIN
            ),
            await client.post(
                "/knowledge/ingest", json={"namespace": bad, "documents": docs("guide/ops.md")}, headers=ADMIN
            ),
        ):
            assert r.status_code == 422 and "Invalid namespace" in r.json()["detail"], (bad, r.text)
    r = await client.post(
        "/knowledge/search", json={"namespace": ["memories", "alice"], "query": "x"}, headers=ADMIN
    )
    assert r.status_code == 422
    assert await store_state(db) == before
    assert (await db.store.aget(("memories", "alice"), "m1")).value == {"text": secret}


def _doc(source: str, content: str = "# T\n\ntext", **kw) -> dict:
    return {"source": source, "content": content, **kw}


@pytest.mark.parametrize(
    "body,status,needle",
    [
        ({"namespace": "kb-bad", "documents": []}, 422, "documents"),
        ({"namespace": "kb-bad"}, 422, "documents"),
        ({"namespace": "kb-bad", "documents": "guide/ops.md"}, 422, "documents"),
        ({"namespace": "kb-bad", "documents": [_doc("a.md", 5)]}, 422, "content"),
        ({"namespace": "kb-bad", "documents": [{"content": "x"}]}, 422, "source"),
        ({"namespace": "kb-bad", "documents": [_doc("a.md")], "prune": [1]}, 422, "prune"),
        ({"namespace": "kb-bad", "documents": [_doc("a.md", encoding="latin-1")]}, 422, "encoding"),
        ({"namespace": "kb-bad", "documents": [_doc("a.md", sourse="x")]}, 422, "sourse"),
        ({"namespace": "kb-bad", "documents": [_doc("a.md")], "prnue": True}, 422, "prnue"),
        ({"namespace": 7, "documents": [_doc("a.md")]}, 422, "namespace"),
        ({"namespace": "kb-bad", "documents": [_doc("a.md", "!!!", encoding="base64")]}, 422, "base64"),
        (
            {"namespace": "kb-bad", "documents": [_doc("a.md"), _doc("b.docx")]},
            422,
            "unsupported extension '.docx'",
        ),
        ({"namespace": "kb-bad", "documents": [_doc("README")]}, 422, "unsupported extension"),
        ({"namespace": "kb-bad", "documents": [_doc("a.pdf", "%PDF-1.4 not base64")]}, 422, "base64"),
        ({"namespace": "kb-bad", "documents": [_doc("a.md"), _doc("a.md")]}, 422, "more than once"),
        ({"namespace": "kb-bad", "documents": [_doc("")]}, 422, "source"),
        ({"namespace": "kb-bad", "documents": [_doc("x" * 510 + ".md")]}, 422, "source"),
        ({"namespace": "kb-bad", "documents": [_doc("/etc/passwd.md")]}, 422, "relative"),
        ({"namespace": "kb-bad", "documents": [_doc("../../secret.md")]}, 422, "relative"),
        ({"namespace": "kb-bad", "documents": [_doc("C:\\docs\\a.md")]}, 422, "relative"),
        ({"namespace": "kb-bad", "documents": [_doc("a\nb.md")]}, 422, "control"),
        ({"namespace": "kb-bad", "documents": [_doc(" a.md")]}, 422, "whitespace"),
        (
            {"namespace": "kb-bad", "documents": [_doc("a.md")], "chunk_tokens": 40, "overlap": 40},
            422,
            "overlap",
        ),
        ({"namespace": "kb-bad", "documents": [_doc("a.md")], "chunk_tokens": 0}, 422, "chunk_tokens"),
    ],
)
async def test_bad_ingest_gets_4xx_and_writes_nothing(client, db, body, status, needle):
    before = await store_state(db)
    r = await client.post("/knowledge/ingest", json=body, headers=ADMIN)
    assert r.status_code == status, r.text
    assert set(r.json()) == {"detail"} and needle in r.json()["detail"], r.text
    assert await store_state(db) == before


async def test_one_unreadable_document_fails_the_whole_batch(client, db):
    """Every document is parsed before anything is written: a broken PDF after a good one writes nothing."""
    await ingest(client, "kb-batch", docs("guide/ops.md"))
    before = await store_state(db)
    changed = OPS.replace("Scaling out", "Scaling up")
    body = {
        "namespace": "kb-batch",
        "prune": True,
        "documents": [
            {"source": "guide/ops.md", "content": changed},
            {"source": "new.md", "content": "# New\n\nfresh"},
            {"source": "broken.pdf", "content": b64(b"this is not a pdf"), "encoding": "base64"},
        ],
    }
    r = await client.post("/knowledge/ingest", json=body, headers=ADMIN)
    assert r.status_code == 422 and "broken.pdf" in r.json()["detail"] and "PDF" in r.json()["detail"], r.text
    assert await store_state(db) == before
    assert (await sources(client, "kb-batch"))["guide/ops.md"]["file_hash"] == hashlib.sha256(
        OPS.encode()
    ).hexdigest()


async def test_malformed_and_oversized_bodies(client, db):
    before = await store_state(db)
    for path in ("/knowledge/ingest", "/knowledge/search"):
        r = await client.post(
            path, content=b'{"documents": [', headers={**ADMIN, "content-type": "application/json"}
        )
        assert r.status_code == 400 and r.json()["detail"].startswith("Malformed JSON body"), r.text
    big = {"namespace": "kb-big", "documents": [_doc("big.md", "word " * (LIMIT // 4))]}
    r = await client.post("/knowledge/ingest", json=big, headers=ADMIN)
    assert r.status_code == 413 and r.json() == {"detail": f"Request body too large (limit {LIMIT} bytes)"}
    r = await client.request(
        "DELETE",
        "/knowledge/sources",
        content=b'{"source": "a.md", "pad": "' + b"x" * LIMIT + b'"}',
        headers={**ADMIN, "content-type": "application/json"},
    )
    assert r.status_code == 413
    r = await client.request(
        "DELETE",
        "/knowledge/sources",
        content=b'{"source": ',
        headers={**ADMIN, "content-type": "application/json"},
    )
    assert r.status_code == 400 and "Malformed JSON" in r.json()["detail"]
    for content in (
        b"",
        b"[1]",
        b'{"namespace": "kb-x"}',
        b'{"source": 5}',
        b'{"source": "a.md", "extra": 1}',
    ):
        r = await client.request(
            "DELETE",
            "/knowledge/sources",
            content=content,
            headers={**ADMIN, "content-type": "application/json"},
        )
        assert r.status_code == 422 and isinstance(r.json()["detail"], str), (content, r.text)
    assert await store_state(db) == before


@pytest.mark.parametrize(
    "body,needle",
    [
        ({}, "query"),
        ({"query": ""}, "query"),
        ({"query": 5}, "query"),
        ({"query": "x", "k": 0}, "k"),
        ({"query": "x", "k": "many"}, "k"),
        ({"query": "x", "k": 101}, "k"),
        ({"query": "x", "mode": "bm25"}, "mode"),
        ({"query": "x", "filter": "source"}, "filter"),
        ({"query": "x", "mode": "fts", "filter": {"source": {"$regex": "."}}}, "unsupported filter operator"),
        ({"query": "x", "filter": {"source": {"$regex": "."}}}, "Unsupported operator"),
        ({"query": "x", "namespaces": "kb-main"}, "namespaces"),
    ],
)
async def test_bad_search_gets_422(client, body, needle):
    r = await client.post("/knowledge/search", json=body, headers=ADMIN)
    assert r.status_code == 422 and needle in r.json()["detail"], r.text


async def test_a_user_named_like_a_corpus_cannot_reach_it_through_the_store_api(db):
    """The store API puts the user id second: ("docs", "shared") would be the corpus named "shared"."""
    service = KeelService(Settings(keel_api_keys="ka:alice:admin,ks:shared", keel_max_body_bytes=LIMIT), db)
    shared = {"Authorization": "Bearer ks"}
    async with api_client(service) as c:
        await ingest(c, "shared", docs("guide/ops.md"))
        before = await store_state(db)
        for label in ("docs", "docs_meta"):
            r = await c.put(
                "/store/items",
                json={"namespace": [label], "key": "x", "value": {"text": "poison"}},
                headers=shared,
            )
            assert r.status_code == 422 and "reserved" in r.json()["detail"]
            r = await c.post("/store/items/search", json={"namespace_prefix": [label]}, headers=shared)
            assert r.status_code == 422
            r = await c.request(
                "DELETE", "/store/items", json={"namespace": [label], "key": "guide/ops.md"}, headers=shared
            )
            assert r.status_code == 422
        r = await c.post("/store/namespaces", json={}, headers=shared)
        assert r.status_code == 200 and r.json()["namespaces"] == []
        assert await store_state(db) == before
        hits = (
            await c.post(
                "/knowledge/search", json={"namespace": "shared", "query": "workers"}, headers=shared
            )
        ).json()
        assert hits and all("poison" not in h["text"] for h in hits)
