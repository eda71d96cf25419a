"""The STATE report written out as JSON directly is the document json.dumps makes of it."""

from __future__ import annotations

import json
from pathlib import Path

import trio.testing

from chunkstore.chunking import CHUNK_SIZE
from lanvault.state_report import state_report, state_report_json

from .cluster import open_cluster


async def test_the_json_written_directly_is_the_report(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / 'naïve "quoted" \\ name.txt').write_text("x" * 10)
    (src / "sub" / "big.bin").write_bytes(bytes(2 * CHUNK_SIZE + 5))
    (src / "empty").write_bytes(b"")
    async with open_cluster(tmp_path / "c", 3) as cluster:
        owner = cluster.members[1].owner
        await owner.backup_path(src, degree=2)
        await cluster.members[2].owner.backup_path(src, degree=1)  # node 2 holds for others too
        for member in (cluster.members[1], cluster.members[2], cluster.members[3]):
            direct = json.loads(await state_report_json(member.owner))
            assert direct == await state_report(member.owner)
        report = await state_report(owner)
        files = report["files"]
        assert isinstance(files, list) and len(files) == 3
        assert [c["size"] for f in files if f["path"].endswith("big.bin") for c in f["chunks"]] == [
            CHUNK_SIZE,
            CHUNK_SIZE,
            5,
        ]


def test_paths_are_written_as_json_dumps_writes_them() -> None:
    from lanvault.state_report import _json_text

    for path in ["/plain/a b.txt", 'q"uote', "back\\slash", "naïve", "del\x7f", "tab\t", "", "€"]:
        assert _json_text(path) == json.dumps(path)
