"""The cloud tier on real processes: a node keeping its chunks in an S3 bucket (a real
S3-compatible HTTP service) holds copies like any node, serves restores when the LAN's
holders are dead, and deletes what its owner deletes."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from tests.conftest import make_bucket, s3_server

from .procs import ProcessCluster, lanvault

pytestmark = pytest.mark.slow


def objects(endpoint: str, bucket: str) -> dict[str, int]:
    client = boto3.client("s3", endpoint_url=endpoint)
    found: dict[str, int] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        found.update((o["Key"], o["Size"]) for o in page.get("Contents", []))
    return found


@pytest.fixture
def bucket(s3_endpoint: str) -> str:
    name = f"lanvault-{uuid.uuid4().hex[:12]}"
    make_bucket(s3_endpoint, name)
    return name


@pytest.fixture
def cloud_cluster(tmp_path: Path, s3_endpoint: str, bucket: str) -> Iterator[ProcessCluster]:
    cluster = ProcessCluster(tmp_path / "net", 4)
    try:
        for node_id in (1, 2, 3):
            cluster.start(node_id)
        cluster.start(4, "--bucket", f"s3://{bucket}/office", "--s3-endpoint", s3_endpoint)
        cluster.wait_mesh()
        yield cluster
    finally:
        cluster.stop_all()
        cluster.assert_no_tracebacks()


def test_a_bucket_holds_copies_serves_restores_and_deletes(
    cloud_cluster: ProcessCluster, tmp_path: Path, s3_endpoint: str, bucket: str
) -> None:
    src = tmp_path / "src"
    (src / "docs").mkdir(parents=True)
    (src / "docs" / "report.odt").write_bytes(os.urandom(700_001))
    (src / "photo.jpg").write_bytes(os.urandom(1_280_000))
    (src / "empty.txt").write_bytes(b"")
    cloud_cluster.cli(1, "backup", src, "--degree", "3")
    assert min(cloud_cluster.degrees(1)) == 3  # two LAN holders and the bucket

    held = cloud_cluster.json(4, "state")["stored"]
    in_bucket = objects(s3_endpoint, bucket)
    assert len(held) == len(in_bucket) > 30
    assert all(key.startswith("office/chunks/1/") for key in in_bucket)
    assert sum(c["size"] for c in held) == sum(in_bucket.values())
    nodes = {n["id"]: n for n in cloud_cluster.json(1, "status")["nodes"]}
    assert nodes[4]["computer"].startswith("bucket ") and bucket in nodes[4]["computer"]

    # The computers holding the LAN's copies die: the bucket alone brings everything back.
    cloud_cluster.kill(2)
    cloud_cluster.kill(3)
    out = tmp_path / "out"
    cloud_cluster.cli(1, "restore", src, "--to", out)
    for name in ("docs/report.odt", "photo.jpg", "empty.txt"):
        assert (out / name).read_bytes() == (src / name).read_bytes()

    before = len(objects(s3_endpoint, bucket))
    cloud_cluster.cli(1, "delete", src / "photo.jpg")
    cloud_cluster.wait(
        lambda: len(objects(s3_endpoint, bucket)) == before - 20,  # 1,280,000 B = 20 chunks + 0
        30,
        "the deleted file's objects to leave the bucket",
    )
    assert lanvault("check", "--dir", cloud_cluster.nodes[4].state, "--json").returncode == 0


def test_a_bucket_that_cannot_be_opened_is_one_line(tmp_path: Path, s3_endpoint: str) -> None:
    cluster = ProcessCluster(tmp_path / "net", 1)
    state = cluster.nodes[1].state
    missing = f"lanvault-missing-{uuid.uuid4().hex[:8]}"
    result = lanvault(
        "node", "--dir", state, "--bucket", f"s3://{missing}", "--s3-endpoint", s3_endpoint,
        check=False, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0
    assert f"bucket s3://{missing}/: open failed: no such bucket" in result.stderr
    assert json.loads((state / "config.json").read_text()).get("bucket", "") == ""  # not kept
    bad = lanvault("node", "--dir", state, "--bucket", "backups", check=False, timeout=60)
    assert bad.returncode == 1 and "expected s3://NAME[/PREFIX]" in bad.stderr
    alone = lanvault("node", "--dir", state, "--s3-endpoint", s3_endpoint, check=False, timeout=60)
    assert alone.returncode == 2 and "go with --bucket" in alone.stderr


def test_while_the_bucket_is_unreachable_the_lan_holds_and_serves(tmp_path: Path) -> None:
    with s3_server() as (endpoint, server):
        make_bucket(endpoint, "lanvault-outage")
        cluster = ProcessCluster(tmp_path / "net", 4)
        try:
            for node_id in (1, 2, 3):
                cluster.start(node_id)
            cluster.start(4, "--bucket", "s3://lanvault-outage", "--s3-endpoint", endpoint)
            cluster.wait_mesh()
            before = tmp_path / "before.bin"
            before.write_bytes(os.urandom(3_000_000))
            cluster.cli(1, "backup", before, "--degree", "2")
            assert objects(endpoint, "lanvault-outage")  # the bucket took its share

            server.kill()  # the internet link goes down
            server.wait()
            during = tmp_path / "during.bin"
            during.write_bytes(os.urandom(3_000_000))
            cluster.cli(1, "backup", during, "--degree", "2", timeout=120)
            assert min(cluster.degrees(1)) == 2  # every copy the bucket refused went elsewhere
            for name in (before, during):  # the bucket's copies are re-fetched from the LAN
                cluster.cli(1, "restore", name, "--to", tmp_path / f"out-{name.name}")
                assert (tmp_path / f"out-{name.name}").read_bytes() == name.read_bytes()
            check = cluster.cli(4, "check", check=False)
            assert check.returncode == 1 and check.stderr.count("\n") == 1
            assert "cannot check the store: bucket s3://lanvault-outage/: " in check.stderr
        finally:
            cluster.stop_all()
        cluster.assert_no_tracebacks()
        log = cluster.nodes[4].log.read_text()
        assert "storing a batch of" in log  # the bucket was asked, and said no in one line
        refused = [line for line in log.splitlines() if "cannot read" in line]
        assert all(" chunks of node 1: bucket " in line for line in refused)  # one per request
