"""Shared fixtures. Every test runs with the weakened, test-only key derivation."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

os.environ.setdefault("LANVAULT_TEST_WEAKEN_KDF", "1")

import pytest
from hypothesis import HealthCheck, settings

from chunkstore.keys import KeyRing, new_master_key

# A shared 2-core machine runs the suite: per-example timing says nothing about correctness.
settings.register_profile(
    "lanvault", deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.load_profile("lanvault")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--full",
        action="store_true",
        help="run every fault and scale scenario at full size (scripts/test --full)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``full`` run only with ``--full``: the long scenarios of tests/faults."""
    if config.getoption("--full"):
        return
    skip = pytest.mark.skip(reason="a --full scenario (scripts/test --full)")
    for item in items:
        if item.get_closest_marker("full"):
            item.add_marker(skip)


@pytest.fixture
def keys() -> KeyRing:
    return KeyRing.from_master(new_master_key())


@contextlib.contextmanager
def s3_server() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A real S3-compatible HTTP service (moto's server) in a subprocess: (endpoint, process)."""
    from tests.system.procs import free_port

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                raise RuntimeError("the S3 test server did not start") from None
            time.sleep(0.2)
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "lanvault-test")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "lanvault-test")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    try:
        yield f"http://127.0.0.1:{port}", server
    finally:
        server.kill()
        server.wait()


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """One S3 service for the session's cloud-tier tests (each makes its own bucket)."""
    with s3_server() as (endpoint, _process):
        yield endpoint


def make_bucket(endpoint: str, name: str) -> None:
    import boto3

    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=name)
