"""A process that puts (and sometimes deletes) chunks until it is killed.

Prints ``P <hex>`` after each put batch returns and ``D <hex>`` after each delete returns:
those lines are the acknowledgements the crash test holds the store to. ``X <hex>`` comes
before a delete: a chunk killed with its delete in flight may be there or not.
"""

from __future__ import annotations

import random
import sys

from chunkstore.keys import KeyRing
from chunkstore.pipeline import prepare_chunk
from chunkstore.store import ChunkStore, PutItem


def main() -> None:
    root, seed = sys.argv[1], int(sys.argv[2])
    rng = random.Random(seed)
    keys = KeyRing.from_master(bytes(32))
    store = ChunkStore.open(root, capacity=10**12)
    held: list[bytes] = []
    counter = 0
    while True:
        action = rng.random()
        if action < 0.8 or not held:
            batch = []
            for _ in range(rng.randint(1, 12)):
                counter += 1
                size = rng.choice([0, 1, 1000, 64_000, rng.randint(0, 64_000)])
                body = counter.to_bytes(8, "big") + rng.randbytes(max(0, size - 8))
                batch.append(prepare_chunk(keys, body[:size] if size >= 8 else body))
            store.put_many([PutItem(seed % 7, c.address, c.envelope, 2) for c in batch])
            for c in batch:
                held.append(c.address)
                print("P", c.address.hex(), flush=False)
            sys.stdout.flush()
        elif action < 0.95:
            victim = held.pop(rng.randrange(len(held)))
            print("X", victim.hex(), flush=True)  # in flight: killed now, it may be gone or not
            store.delete(seed % 7, victim)
            print("D", victim.hex(), flush=True)
        else:
            store.compact(min_garbage_ratio=0.1)


if __name__ == "__main__":
    main()
