"""The numbers docs/ states are the code's: each figure is read out of the prose and compared
with the constant it describes, so a change to one without the other fails here."""

from __future__ import annotations

import re
from pathlib import Path

from chunkstore.chunking import CHUNK_SIZE
from chunkstore.envelope import MAX_ENVELOPE_SIZE
from lanvault.recover import PEER_WAIT
from node.admission import MAX_UNAUTHENTICATED, MAX_UNAUTHENTICATED_PER_HOST
from node.localtree import GROUP_BYTES as BACKUP_GROUP_BYTES
from node.localtree import GROUP_FILES as BACKUP_GROUP_FILES
from node.localtree import SEAL_BYTES, SMALL_FILE
from node.membership import MAX_UNSEEN_PEERS
from node.messages import (
    MAX_ADDRESSES,
    MAX_ANONYMOUS_FRAME,
    MAX_BATCH,
    MAX_BLOB,
    MAX_ENVELOPE,
    MAX_FRAME,
    MAX_HELLO_FRAME,
    MAX_MESSAGE_TEXT,
    MAX_PUT_BATCH,
    MESSAGE_TYPES,
    PROTOCOL_VERSION,
    SUPPORTED_VERSIONS,
    put_batch_limit,
)
from node.node import ANONYMOUS_TIMEOUT, IDLE_TIMEOUT
from node.owner import GROUPS_IN_FLIGHT
from node.pool import GONE_DIAL_DELAY, MAX_DIAL_DELAY
from node.restore_files import GROUP_BYTES as RESTORE_GROUP_BYTES
from node.restore_files import GROUP_FILES
from node.restore_files import GROUPS as RESTORE_GROUPS

DOCS = Path(__file__).resolve().parents[1] / "docs"


def number(text: str) -> int:
    return int(text.replace(",", ""))


def test_the_protocol_table_lists_every_message_type_and_nothing_else() -> None:
    text = (DOCS / "protocol.md").read_text()
    table = text.split("| type | name |", 1)[1].split("\n\n", 1)[0]
    rows = re.findall(r"^\| (\d+) \| ([A-Z_]+) \|", table, re.MULTILINE)
    documented = {int(n): name.replace("_", "").lower() for n, name in rows}
    in_code = {n: cls.__name__.lower() for n, cls in MESSAGE_TYPES.items()}
    assert documented == in_code


def test_the_protocol_limits_are_the_codes() -> None:
    text = " ".join((DOCS / "protocol.md").read_text().split())
    stated = {
        "envelope": r"`envelope` is at most ([\d,]+) bytes",
        "addresses": r"`addresses` lists hold at most ([\d,]+) addresses",
        "blob": r"`blob` is at most ([\d,]+) bytes",
        "message": r"`message` is at most ([\d,]+) characters",
        "hello": r"`MAX_HELLO_FRAME` = ([\d,]+) bytes",
        "anonymous": r"`MAX_ANONYMOUS_FRAME` = ([\d,]+) bytes",
        "idle": r"arrived for (\d+) s",
        "frame": r"at most `MAX_FRAME` = ([\d,]+)",
        "anonymous_life": r"an anonymous one after (\d+) s",
        "strangers": r"at most (\d+) connections that have not proven",
        "per_host": r"(\d+) per source address",
    }
    found = {}
    for key, pattern in stated.items():
        match = re.search(pattern, text)
        assert match, f"docs/protocol.md no longer states the {key} limit as expected"
        found[key] = number(match.group(1))
    assert found == {
        "envelope": MAX_ENVELOPE,
        "addresses": MAX_ADDRESSES,
        "blob": MAX_BLOB,
        "message": MAX_MESSAGE_TEXT,
        "hello": MAX_HELLO_FRAME,
        "anonymous": MAX_ANONYMOUS_FRAME,
        "idle": IDLE_TIMEOUT,
        "frame": MAX_FRAME,
        "anonymous_life": ANONYMOUS_TIMEOUT,
        "strangers": MAX_UNAUTHENTICATED,
        "per_host": MAX_UNAUTHENTICATED_PER_HOST,
    }
    assert MAX_ENVELOPE == MAX_ENVELOPE_SIZE


def test_the_security_model_states_the_same_caps() -> None:
    text = " ".join((DOCS / "security.md").read_text().split())
    match = re.search(r"at most (\d+) at once that have not proven a certificate", text)
    assert match and number(match.group(1)) == MAX_UNAUTHENTICATED
    match = re.search(r"(\d+) per source address \(`MAX_UNAUTHENTICATED_PER_HOST`\)", text)
    assert match and number(match.group(1)) == MAX_UNAUTHENTICATED_PER_HOST
    match = re.search(r"sends nothing for (\d+) s", text)
    assert match and number(match.group(1)) == IDLE_TIMEOUT
    match = re.search(r"are at most (\d+) \(`MAX_UNSEEN_PEERS`\)", text)
    assert match and number(match.group(1)) == MAX_UNSEEN_PEERS


def test_the_chunk_size_stated_is_the_codes() -> None:
    pattern = r"([\d,]+)-byte chunks|chunks of ([\d,]+) bytes|exactly ([\d,]+) bytes"
    sizes = {
        number("".join(m))
        for name in ("formats.md", "architecture.md")
        for m in re.findall(pattern, " ".join((DOCS / name).read_text().split()))
    }
    assert sizes == {CHUNK_SIZE}


def test_the_group_sizes_stated_are_the_codes() -> None:
    text = " ".join((DOCS / "architecture.md").read_text().split())
    restore = re.search(r"restored in groups of up to (\d+) files or (\d+) MiB, (\d+) groups", text)
    assert restore, "docs/architecture.md no longer states the restore's groups as expected"
    stated = tuple(int(n) for n in restore.groups())
    assert stated == (GROUP_FILES, RESTORE_GROUP_BYTES >> 20, RESTORE_GROUPS)
    backup = re.search(
        r"Files up to two chunks go in groups of up to (\d+) files or (\d+) MiB, (\d+) groups", text
    )
    assert backup, "docs/architecture.md no longer states the backup's groups as expected"
    stated = tuple(int(n) for n in backup.groups())
    assert stated == (BACKUP_GROUP_FILES, BACKUP_GROUP_BYTES >> 20, GROUPS_IN_FLIGHT)
    assert SMALL_FILE == 2 * CHUNK_SIZE


def test_the_batch_sizes_stated_are_the_protocols() -> None:
    text = " ".join((DOCS / "protocol.md").read_text().split())
    put = re.search(
        r"a PUTCHUNKS holds 1\.\.(\d+) chunks and, like every frame, at most 1 MiB", text
    )
    get = re.search(r"a GETCHUNKS asks for 1\.\.(\d+) addresses", text)
    assert put and get, "docs/protocol.md no longer states the batch sizes as expected"
    assert (int(put.group(1)), int(get.group(1))) == (MAX_PUT_BATCH, MAX_BATCH)
    assert text.startswith(f"# The lanvault peer protocol, version {PROTOCOL_VERSION} ")
    offered = "[" + ", ".join(str(v) for v in SUPPORTED_VERSIONS) + "]"
    assert f"(this document: `{offered}`)" in text
    assert f"up to {MAX_PUT_BATCH} chunks (version 1: {MAX_BATCH})" in text
    assert put_batch_limit(1) == MAX_BATCH and put_batch_limit(PROTOCOL_VERSION) == MAX_PUT_BATCH
    assert MAX_FRAME == 1 << 20
    arch = " ".join((DOCS / "architecture.md").read_text().split())
    assert f"a frame holds ~100 chunks of 8 KiB, at most {MAX_PUT_BATCH}" in arch
    assert f"sealed {SEAL_BYTES >> 20} MiB per hop" in arch


def test_the_dial_backoffs_stated_are_the_codes() -> None:
    text = (DOCS / "architecture.md").read_text().replace("\n", " ")
    match = re.search(r"backoff of at most (\d+) s, or (\d+) s for a peer that is gone", text)
    assert match, "architecture.md no longer states the dial backoffs"
    assert (number(match.group(1)), number(match.group(2))) == (MAX_DIAL_DELAY, GONE_DIAL_DELAY)


def test_the_recovery_wait_stated_is_the_codes() -> None:
    text = (DOCS / "architecture.md").read_text().replace("\n", " ")
    match = re.search(r"is up, or (\d+) s \(`PEER_WAIT`", text)
    assert match and number(match.group(1)) == PEER_WAIT


def test_the_reliability_document_is_written_from_the_suite() -> None:
    """docs/reliability.md lists every scenario and its criterion, with the figures kept in
    docs/reliability-results.json, exactly as scripts/reliability_report.py writes it."""
    from tests.faults.registry import SCENARIOS
    from tests.faults.report import DOCUMENT, KEPT_RESULTS, load, render

    text = DOCUMENT.read_text()
    assert text == render(load(KEPT_RESULTS)), "run scripts/reliability_report.py"
    for scenario in SCENARIOS:
        assert scenario.criterion in " ".join(text.split())
    tests = Path(__file__).parent / "faults"
    marked = {
        key
        for path in tests.glob("test_*.py")
        for key in re.findall(r'scenario\("([a-z-]+)"', path.read_text())
    }
    recorded = {r["scenario"] for r in load(KEPT_RESULTS).values()}
    assert marked <= recorded, f"scenarios with no figures kept: {marked - recorded}"


def test_the_disk_reserve_and_reclaim_figures_are_the_codes() -> None:
    from chunkstore.segments import DISK_RESERVE
    from node.reclaim import COPIES_IN_FLIGHT, RECLAIM_BATCH

    formats = " ".join((DOCS / "formats.md").read_text().split())
    architecture = " ".join((DOCS / "architecture.md").read_text().split())
    assert f"disk can take less {DISK_RESERVE // 2**20} MiB" in formats
    assert f"less {DISK_RESERVE // 2**20} MiB kept for the index" in architecture
    assert f"most-replicated first, {RECLAIM_BATCH} at a time" in architecture
    assert f"copied elsewhere ({COPIES_IN_FLIGHT} at once" in architecture


def test_the_unsent_store_figure_is_the_codes() -> None:
    from node.pending import UNSENT_BYTES

    formats = " ".join((DOCS / "formats.md").read_text().split())
    architecture = " ".join((DOCS / "architecture.md").read_text().split())
    assert f"quota {UNSENT_BYTES // 2**30} GiB, `UNSENT_BYTES`" in formats
    assert f"**unsent** store (up to {UNSENT_BYTES // 2**30} GiB;" in architecture


def test_the_restore_window_figures_are_the_codes() -> None:
    from node.restore_windows import LEFTOVER_ROUNDS, RESTORE_WINDOW, RESTORE_WINDOWS

    architecture = " ".join((DOCS / "architecture.md").read_text().split())
    assert f"fetches windows of {RESTORE_WINDOW} chunks" in architecture
    assert f"up to {RESTORE_WINDOWS} windows in flight" in architecture
    assert f"other holders first, {LEFTOVER_ROUNDS} more times" in architecture


def test_the_catalog_copy_pacing_stated_is_the_codes() -> None:
    from node.safekeeping import COPY_SHARE, MAX_BEHIND, SETTLE

    architecture = " ".join((DOCS / "architecture.md").read_text().split())
    words = {2: "two"}
    assert f"commits are copied {words[int(SETTLE)]} seconds after they come" in architecture
    assert f"lacks is {MAX_BEHIND:g} seconds old (or {COPY_SHARE:g} times as long" in architecture


def test_the_architecture_map_names_every_module() -> None:
    """The module map at the top of architecture.md names every module of the four packages
    (by file name, or by name in the chunkstore list), and none that is gone."""
    text = (DOCS / "architecture.md").read_text()
    figure = text[: text.index("```", text.index("```") + 3)]
    named = set(re.findall(r"\b([a-z_]+)(?:\.py)?\b", figure))
    root = DOCS.parent
    missing = [
        f"{package}/{path.name}"
        for package in ("lanvault", "node", "fs", "chunkstore")
        for path in sorted((root / package).glob("*.py"))
        if path.stem != "__init__" and path.stem not in named
    ]
    assert not missing, f"architecture.md's module map does not name {missing}"
    stale = [
        name
        for name in re.findall(r"\b([a-z_]+)\.py\b", figure)
        if not any(
            (root / package / f"{name}.py").exists()
            for package in ("lanvault", "node", "fs", "chunkstore")
        )
    ]
    assert not stale, f"architecture.md's module map names modules that are gone: {stale}"


def test_the_numbers_protocol_and_formats_state_are_the_codes() -> None:
    """Heartbeat, down, retry and STATUS in protocol.md, the wrapped key's size in formats.md."""
    import os

    from chunkstore.keys import new_master_key, wrap_master_key
    from lanvault.state import Config
    from node.replication import BACKOFF_FIRST, BACKOFF_MAX, REPLICATE_ROUNDS

    protocol = " ".join((DOCS / "protocol.md").read_text().split())
    config = Config(node_id=1, network_id="0" * 16)
    assert f"every {config.heartbeat_interval:g} s (`--heartbeat`)" in protocol
    assert f"a peer silent for {config.down_after:g} s is *down*" in protocol
    assert (
        f"backs off {BACKOFF_FIRST:g} s doubling to {BACKOFF_MAX:g} s, with ±20 % jitter,"
        f" for {REPLICATE_ROUNDS} rounds" in protocol
    )
    match = re.search(r"A map describing the node \((.*?)\) for `lanvault status`", protocol)
    assert match, "protocol.md no longer describes STATUS's map"
    stated = set(re.findall(r"`([a-z_]+)`", match.group(1)))
    import inspect

    from node.node import Node

    sent = set(re.findall(r'"([a-z_]+)":', inspect.getsource(Node.status_info)))
    assert stated == sent, (stated, sent)

    os.environ.setdefault("LANVAULT_TEST_WEAKEN_KDF", "1")
    size = len(wrap_master_key(new_master_key(), "correct horse battery staple"))
    formats = " ".join((DOCS / "formats.md").read_text().split())
    assert f"also stored on the peers), {size} bytes:" in formats
    assert f"W = length of the wrapped key (u16, {size})" in formats


def test_protocol_md_gives_each_request_the_answer_the_code_accepts() -> None:
    from node.messages import ANSWERS
    from node.protocol import ANONYMOUS_REQUESTS

    text = (DOCS / "protocol.md").read_text()
    rows = re.findall(r"^\| (\d+) \| ([A-Z_]+) \| [^|]* \| ([^|]*) \|$", text, re.M)
    number = {name: int(n) for n, name, _answer in rows}
    stated = {
        int(n): {number[a] for a in re.findall(r"[A-Z_]+", answer) if a not in ("ERROR", "OR")}
        for n, _name, answer in rows
        if answer.strip() != "—"
    }
    code = {kind.TYPE: {a.TYPE for a in answers} for kind, answers in ANSWERS.items()}
    assert stated == code
    names = {name for _n, name, _a in rows if int(_n) in {k.TYPE for k in ANONYMOUS_REQUESTS}}
    assert "only KITREQUEST, KITPROOF and ENROL may be sent" in " ".join(text.split())
    assert names == {"KITREQUEST", "KITPROOF", "ENROL"}


def test_the_systemd_units_run_commands_the_cli_accepts() -> None:
    """docs/lanvault-node.service and lanvault-mount.service start real commands: their
    ExecStart lines parse with lanvault's own parser (a renamed option would break them)."""
    from lanvault.cli import build_parser

    for unit, command in (("node", "node"), ("mount", "mount")):
        text = (DOCS / f"lanvault-{unit}.service").read_text()
        [line] = [x for x in text.splitlines() if x.startswith("ExecStart=")]
        words = line.removeprefix("ExecStart=").split()
        assert words[0].endswith("/bin/lanvault") and words[1] == command
        parsed = build_parser().parse_args(words[1:])
        assert parsed.command == command
        assert "Type=simple" in text  # the command stays in the foreground, as both do
