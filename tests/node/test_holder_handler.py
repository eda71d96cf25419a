"""The holder's request handler on its own (no network): what it answers to each request of a
member, on a real store, and what it refuses."""

from __future__ import annotations

from pathlib import Path

import trio

from chunkstore.keys import KeyRing
from chunkstore.pipeline import prepare_chunk
from chunkstore.store import ChunkStore
from node.holder import HolderService
from node.messages import (
    STORED_ALREADY,
    STORED_ERROR_BASE,
    STORED_NEW,
    ChunksMany,
    Delete,
    Deleted,
    Error,
    ErrorCode,
    GetChunks,
    GetMeta,
    Holding,
    Message,
    PutChunks,
    PutMeta,
    Query,
    Status,
    StatusReply,
    StoredMany,
    Wanted,
)


async def test_a_holder_answers_each_request_and_refuses_what_is_not_allowed(
    tmp_path: Path, keys: KeyRing
) -> None:
    store = ChunkStore.open(tmp_path / "store", capacity=10**9)
    holder = HolderService(
        store, trio.CapacityLimiter(2), lambda: {"node_id": 9}, lambda *_: None, lambda *_: None
    )
    a, b = (prepare_chunk(keys, bytes([n]) * 5000) for n in range(2))
    owner = 2

    async def ask(message: Message, peer: int = owner) -> Message:
        assert isinstance(message, PutChunks | GetChunks | Query | Delete | PutMeta | GetMeta
                          | Wanted | Status)  # fmt: skip
        return await holder.handle(message, peer)

    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(holder.run_writer)
            await nursery.start(holder.run_writer)
            # A bad envelope (too short) does not sink the good one beside it.
            put = PutChunks(1, owner, 2, ((a.address, a.envelope), (b.address, b"x")))
            stored = await ask(put)
            assert stored == StoredMany(1, (STORED_NEW, STORED_ERROR_BASE + ErrorCode.BAD_MESSAGE))
            again = await ask(PutChunks(2, owner, 2, ((a.address, a.envelope),)))
            assert again == StoredMany(2, (STORED_ALREADY,))
            got = await ask(GetChunks(3, owner, (a.address, b.address)))
            assert isinstance(got, ChunksMany) and got.envelopes[0] == a.envelope
            assert got.envelopes[1] == b"" and got.codes[1] == ErrorCode.NOT_FOUND
            assert await ask(Query(4, owner, (a.address, b.address))) == Holding(4, (a.address,))
            # Only the owner deletes its chunks, or writes its records.
            refused = await ask(Delete(5, owner, (a.address,)), peer=3)
            assert isinstance(refused, Error) and refused.code == ErrorCode.FORBIDDEN
            assert store.chunk_count() == 1
            assert await ask(Delete(6, owner, (a.address,))) == Deleted(6, 1)
            assert store.chunk_count() == 0
            refused = await ask(PutMeta(7, owner, "kit", 1, b"k"), peer=3)
            assert isinstance(refused, Error) and refused.code == ErrorCode.FORBIDDEN
            missing = await ask(GetMeta(8, owner, "kit"))
            assert isinstance(missing, Error) and missing.code == ErrorCode.NOT_FOUND
            # WANTED is for a chunk's owner: this node is not node 2.
            not_me = await ask(Wanted(9, owner, (a.address,)))
            assert isinstance(not_me, Error) and not_me.code == ErrorCode.NOT_FOUND
            assert await ask(Status(10)) == StatusReply(10, {"node_id": 9})
            # What came in: both puts of ``a`` (the refused envelope is not counted).
            assert holder.bytes_received == 2 * len(a.envelope)
            nursery.cancel_scope.cancel()
    finally:
        store.close()
