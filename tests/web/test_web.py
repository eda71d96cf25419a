"""The dashboard's HTTP side on a real socket (Hypercorn on this test's trio loop), its data
from stand-in sources: the token on every path, the cookie hand-over, listings and downloads.
tests/system/test_dashboard.py drives it in a real browser against a real network."""

from __future__ import annotations

import http.client
import io
import json
import logging
import tarfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio

from lanvault.history import Listed, SnapshotError
from lanvault.web import COOKIE, STATIC, Sources, serve_web
from node.report import RestoreError

from .test_downloads import Chunks, file_entry, folder

TOKEN = "s3cret-token"


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    complete: bool = True


@dataclass
class Network:
    """What the stand-in daemon holds: one backup run of /home/u/docs."""

    chunks: Chunks = field(default_factory=Chunks)
    entries: dict[str, Listed] = field(default_factory=dict)
    degree_counts: int = 0
    broken: set[bytes] = field(default_factory=set)

    def sources(self) -> Sources:
        async def status(degrees: bool) -> dict[str, Any]:
            self.degree_counts += degrees
            return {"node_id": 1, "nodes": [], "own_chunks_below_degree": 3 if degrees else None}

        async def snapshots() -> list[dict[str, Any]]:
            return [
                {"kind": "backup", "id": "b1", "time": 1.0, "path": "/home/u/docs"},
                {"kind": "mount", "id": "m", "time": 2.0, "path": "/srv/t"},
                {"kind": "backup", "id": "b2", "time": 3.0, "path": "/home/u/docs"},
            ]

        async def entries(snapshot: str, path: str) -> dict[str, Listed]:
            if snapshot != "b2":
                raise SnapshotError(f"no backup run {snapshot} (lanvault snapshots lists them)")
            top = path or "/home/u/docs"
            return {p: e for p, e in self.entries.items() if p == top or p.startswith(top + "/")}

        async def fetch(addresses: list[bytes]) -> list[bytes]:
            if self.broken & set(addresses):
                raise RestoreError("no reachable holder has a valid copy of chunk 12ab…")
            return await self.chunks.fetch(addresses)

        return Sources(
            status, lambda: [{"kind": "backup", "what": "/x"}], snapshots, entries, fetch
        )


@pytest.fixture
def network() -> Network:
    net = Network()
    net.entries = {
        "/home/u/docs": folder(),
        "/home/u/docs/a.txt": file_entry(net.chunks, b"hello\n"),
        "/home/u/docs/big.bin": file_entry(net.chunks, bytes(range(256)) * 40),
        "/home/u/docs/sub": folder(),
        '/home/u/docs/sub/<img src=x onerror=alert(1)> "é".txt': file_entry(net.chunks, b"!"),
    }
    return net


@asynccontextmanager
async def served(network: Network) -> AsyncIterator[str]:
    async with trio.open_nursery() as nursery:
        address = await nursery.start(serve_web, network.sources(), TOKEN, "127.0.0.1:0")
        yield address
        nursery.cancel_scope.cancel()


async def get(address: str, path: str, headers: dict[str, str] | None = None) -> Answer:
    """One GET on a new connection (in a thread: http.client is the browser's stand-in)."""

    def run() -> Answer:
        host, port = address.rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        try:
            conn.request("GET", path, headers=headers or {})
            response = conn.getresponse()
            said = {k.lower(): v for k, v in response.getheaders()}
            try:
                return Answer(response.status, said, response.read())
            except http.client.IncompleteRead as exc:
                return Answer(response.status, said, exc.partial, complete=False)
        finally:
            conn.close()

    return await trio.to_thread.run_sync(run)


def cookie(address: str) -> str:
    """The token's cookie on this server (named by its port)."""
    return COOKIE.format(port=address.rsplit(":", 1)[1])


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


EVERY_PATH = [
    *STATIC,
    "/api/overview",
    "/api/ls?snapshot=b2&path=/home/u/docs",
    "/download?snapshot=b2&path=/home/u/docs/a.txt",
    "/download?snapshot=b2&path=/home/u/docs",
    "/no/such/page",
]


@pytest.mark.parametrize("path", EVERY_PATH)
async def test_every_path_needs_the_token(network: Network, path: str) -> None:
    async with served(network) as address:
        for headers in (
            {},
            bearer("wrong"),
            bearer(TOKEN[:-1]),
            {"Cookie": f"{cookie(address)}=wrong"},
            {"Cookie": f"{COOKIE.format(port=1)}={TOKEN}"},  # another dashboard's is not read
            {"Authorization": "Basic " + TOKEN},
        ):
            answer = await get(address, path, headers)
            assert answer.status == 401, (path, headers)
            assert b"hello" not in answer.body and b"docs" not in answer.body
            assert answer.body.count(b"\n") == 1  # one line, saying what is needed
        wrong_query = path + ("&" if "?" in path else "?") + "token=nope"
        assert (await get(address, wrong_query)).status == 401


async def test_the_token_in_the_address_becomes_a_cookie_and_leaves_the_address(
    network: Network,
) -> None:
    async with served(network) as address:
        first = await get(address, f"/?token={TOKEN}")
        assert first.status == 303 and first.headers["location"] == "/"
        said = first.headers["set-cookie"]
        assert f"{cookie(address)}={TOKEN}" in said
        assert "HttpOnly" in said and "SameSite=strict" in said
        page = await get(address, "/", {"Cookie": f"{cookie(address)}={TOKEN}"})
        assert page.status == 200 and b"<title>lanvault</title>" in page.body
        csp = page.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp
        assert "unsafe" not in csp  # no inline script, no eval
        kept = await get(address, f"/download?snapshot=b2&path=/home/u/docs/a.txt&token={TOKEN}")
        assert kept.status == 303
        assert kept.headers["location"] == "/download?snapshot=b2&path=%2Fhome%2Fu%2Fdocs%2Fa.txt"


async def test_the_overview_says_the_network_the_running_work_and_the_snapshots(
    network: Network,
) -> None:
    async with served(network) as address:
        answer = await get(address, "/api/overview", bearer())
        data = json.loads(answer.body)
        assert data["running"] == [{"kind": "backup", "what": "/x"}]
        assert [s["id"] for s in data["snapshots"]] == ["b2", "m", "b1"]  # newest first
        assert [s["id"] for s in data["trees"]] == ["b2", "m"]  # the last of each folder
        assert data["snapshots_total"] == 3
        # The count below degree asks every peer: it is taken beside the page, not per poll.
        with trio.fail_after(30):
            while network.degree_counts == 0:
                await trio.sleep(0.01)
        again = json.loads((await get(address, "/api/overview", bearer())).body)
        assert again["status"]["own_chunks_below_degree"] == 3
        assert again["status"]["own_degrees_counted_ago"] >= 0
        assert network.degree_counts == 1


async def test_a_folder_lists_its_children_only(network: Network) -> None:
    async with served(network) as address:
        answer = await get(address, "/api/ls?snapshot=b2&path=/home/u/docs", bearer())
        listing = json.loads(answer.body)
        assert [e["name"] for e in listing["entries"]] == ["a.txt", "big.bin", "sub"]
        assert listing["entries"][0]["size"] == 6
        sub = await get(address, "/api/ls?snapshot=b2&path=/home/u/docs/sub", bearer())
        assert [e["name"] for e in json.loads(sub.body)["entries"]] == [
            '<img src=x onerror=alert(1)> "é".txt'
        ]
        missing = await get(address, "/api/ls?snapshot=b9&path=/x", bearer())
        assert (
            missing.status == 404
            and missing.body == b"no backup run b9 (lanvault snapshots lists them)\n"
        )
        a_file = await get(address, "/api/ls?snapshot=b2&path=/home/u/docs/a.txt", bearer())
        assert a_file.status == 400 and b"is a file, not a folder" in a_file.body


async def test_a_file_downloads_whole_with_its_name_and_length(network: Network) -> None:
    async with served(network) as address:
        answer = await get(address, "/download?snapshot=b2&path=/home/u/docs/big.bin", bearer())
        assert answer.status == 200 and answer.complete
        assert answer.body == bytes(range(256)) * 40
        assert answer.headers["content-length"] == str(256 * 40)
        assert answer.headers["content-disposition"].startswith('attachment; filename="big.bin"')
        odd = await get(
            address,
            "/download?snapshot=b2&path=/home/u/docs/sub/%3Cimg%20src%3Dx%20onerror%3Dalert(1)%3E%20%22%C3%A9%22.txt",
            bearer(),
        )
        assert odd.body == b"!"
        disposition = odd.headers["content-disposition"]
        assert 'filename="<img src=x onerror=alert(1)> ___.txt"' in disposition
        assert (
            "filename*=UTF-8''%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E%20%22%C3%A9%22.txt"
            in disposition
        )


async def test_a_folder_downloads_as_a_tar_of_it(network: Network) -> None:
    async with served(network) as address:
        answer = await get(address, "/download?snapshot=b2&path=/home/u/docs", bearer())
        assert answer.status == 200 and answer.complete
        assert answer.headers["content-type"] == "application/x-tar"
        with tarfile.open(fileobj=io.BytesIO(answer.body)) as tar:
            assert tar.extractfile("docs/a.txt").read() == b"hello\n"  # type: ignore[union-attr]
            assert len(tar.getmembers()) == 5


async def test_a_chunk_nobody_has_breaks_the_download_instead_of_ending_it(
    network: Network, caplog: pytest.LogCaptureFixture
) -> None:
    """A browser must say the download failed: a short body that looks whole would be a lie."""
    network.broken = {network.entries["/home/u/docs/big.bin"].chunks[-1]}
    async with served(network) as address:
        single = await get(address, "/download?snapshot=b2&path=/home/u/docs/big.bin", bearer())
        assert not single.complete and len(single.body) < 256 * 40
        folder_tar = await get(address, "/download?snapshot=b2&path=/home/u/docs", bearer())
        assert not folder_tar.complete
        # The server goes on serving.
        fine = await get(address, "/download?snapshot=b2&path=/home/u/docs/a.txt", bearer())
        assert fine.body == b"hello\n"
    said = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.getMessage() for r in said] == [
        "the download of b2:/home/u/docs/big.bin stopped: no reachable holder has a valid copy"
        " of chunk 12ab…",
        "the download of b2:/home/u/docs stopped: no reachable holder has a valid copy"
        " of chunk 12ab…",
    ]
    assert not any(r.exc_info for r in said)  # a line each, no traceback
