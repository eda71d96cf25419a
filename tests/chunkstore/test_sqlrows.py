"""``insert_rows``: what ``executemany`` inserts, in few statements."""

from __future__ import annotations

import sqlite3

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chunkstore.sqlrows import MAX_VALUES, insert_rows

VALUES = st.one_of(st.integers(-(2**63), 2**63 - 1), st.binary(max_size=40), st.none())


def two_tables(width: int) -> sqlite3.Connection:
    db = sqlite3.connect(":memory:", isolation_level=None)
    columns = ", ".join(f"c{i}" for i in range(width))
    for name in ("a", "b"):  # a key over the first column: OR IGNORE has something to ignore
        db.execute(f"CREATE TABLE {name}(id INTEGER PRIMARY KEY AUTOINCREMENT, {columns})")
        db.execute(f"CREATE UNIQUE INDEX {name}_first ON {name}(c0)")
    return db


@settings(max_examples=60, deadline=None)
@given(
    width=st.integers(1, 6),
    data=st.data(),
)
def test_it_inserts_what_executemany_inserts(width: int, data: st.DataObject) -> None:
    rows = data.draw(
        st.lists(st.tuples(*[VALUES] * width), max_size=MAX_VALUES // width * 2 + 5),
        label="rows",
    )
    db = two_tables(width)
    columns = ", ".join(f"c{i}" for i in range(width))
    marks = ",".join("?" * width)
    db.execute("BEGIN")
    before = db.total_changes
    db.executemany(f"INSERT OR IGNORE INTO a({columns}) VALUES ({marks})", rows)
    by_executemany = db.total_changes - before
    inserted = insert_rows(db, f"INSERT OR IGNORE INTO b({columns})", rows)
    db.execute("COMMIT")
    assert inserted == by_executemany
    # The same rows, in the same order, under the same AUTOINCREMENT ids.
    assert list(db.execute("SELECT * FROM a ORDER BY id")) == list(
        db.execute("SELECT * FROM b ORDER BY id")
    )


def test_many_rows_go_in_few_statements() -> None:
    db = two_tables(2)
    statements: list[str] = []
    db.set_trace_callback(statements.append)
    rows = [(n, bytes(32)) for n in range(5000)]
    assert insert_rows(db, "INSERT INTO a(c0, c1)", rows) == 5000
    inserts = [s for s in statements if s.startswith("INSERT")]
    assert len(inserts) == -(-5000 // (MAX_VALUES // 2))  # 5 statements, not 5,000
    ids = [int(r[0]) for r in db.execute("SELECT id FROM a ORDER BY id")]
    assert ids == list(range(ids[0], ids[0] + 5000))  # consecutive across the statements


def test_no_rows_no_statement_and_ragged_rows_are_refused() -> None:
    db = two_tables(2)
    statements: list[str] = []
    db.set_trace_callback(statements.append)
    assert insert_rows(db, "INSERT INTO a(c0, c1)", []) == 0
    assert statements == []
    with pytest.raises(ValueError, match="same number of values"):
        insert_rows(db, "INSERT INTO a(c0, c1)", [(1, 2), (3,)])
    assert db.execute("SELECT COUNT(*) FROM a").fetchone()[0] == 0
