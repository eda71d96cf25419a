"""Small leaks a local user or a host on the LAN could use (docs/security.md, 'smaller leaks')."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from chunkstore.catalogdb import CatalogDB
from lanvault.metrics import metrics_address


def test_the_catalog_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "catalog.sqlite3"
    old = os.umask(0o022)
    try:
        db = CatalogDB(path)
    finally:
        os.umask(old)
    db.set_setting("x", 1)  # the WAL and its index exist now
    db.add_copy_holders([(bytes(32), 2)])  # and the copy's record's
    for name in (
        "catalog.sqlite3",
        "catalog.sqlite3-wal",
        "catalog.sqlite3-shm",
        "catalog-copy.sqlite3",
        "catalog-copy.sqlite3-wal",
        "catalog-copy.sqlite3-shm",
    ):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600, name
    db.close()
    path.chmod(0o644)  # a catalog made before this rule
    CatalogDB(path).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    copy = tmp_path / "copy.sqlite3"
    CatalogDB(path).copy_to(copy)
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600


def test_metrics_bind_this_computer_unless_told_otherwise() -> None:
    assert metrics_address(":9100") == ("127.0.0.1", 9100)
    assert metrics_address("0.0.0.0:9100") == ("0.0.0.0", 9100)
    assert metrics_address("192.0.2.7:0") == ("192.0.2.7", 0)
