"""The SQLite files nightlab owns (the shared memory.db, each campaign's ledger.db): opening,
transactions and numbered forward-only migrations.

`connect` checks the file before anything reads or writes it, so a damaged file is refused with
its path instead of failing later with a bare "database disk image is malformed".

`atomic` exists because Python's sqlite3 (legacy transaction control, as sqlite-utils uses it)
opens a transaction only before INSERT/UPDATE/DELETE: a CREATE TABLE or sqlite-utils' `enable_fts`
(an executescript) runs in autocommit, so `with conn:` around a migration does not make it
atomic. A kill between two statements would leave half a migration that the next start fails on.

`open_database` applies a file's `Schema`: its migrations, in order, each recorded in the file's
migrations table. Append new migrations at the end; never edit or reorder an applied one. A file
that has tables but no migrations table is someone else's, and one that records migrations this
code does not know was written by a newer version: both are refused untouched.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import sqlite_utils

from memory.errors import StoreError

Migration = Callable[[sqlite_utils.Database], None]


@dataclass(frozen=True)
class Schema:
    """One kind of file: its migrations and the table (with its time column) that records them."""

    name: str  # what the file is, in refusals: "memory database", "campaign ledger"
    table: str  # the migrations table; never renamed, or old files would look foreign
    migrations: Sequence[tuple[str, Migration]]
    stamp_column: str  # when each migration was applied
    stamp: Callable[[], str | float]


def connect(path: Path, what: str) -> sqlite_utils.Database:
    """Open `path`; refuse it (StoreError naming it) if it is not SQLite or fails quick_check.

    LangGraph may run a node on its executor thread (it does after some resumes), so the
    connection is not tied to the thread that opened it. Nodes run one at a time: it is only ever
    handed over, never used concurrently.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), check_same_thread=False)
    try:
        verdict = [row[0] for row in conn.execute("PRAGMA quick_check(5)")]
    except sqlite3.DatabaseError as e:
        conn.close()
        raise StoreError(f"{path}: {what} is not a readable SQLite database ({e}); "
                         "refusing to touch it") from e  # fmt: skip
    if verdict != ["ok"]:
        conn.close()
        raise StoreError(f"{path}: {what} is damaged (quick_check: {'; '.join(verdict)}); "
                         f"refusing to touch it. Restore it from a backup or move it away")  # fmt: skip
    return sqlite_utils.Database(conn)


@contextmanager
def atomic(conn: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception; DDL included."""
    saved = conn.isolation_level
    conn.isolation_level = None  # manual control: no implicit COMMIT inside executescript
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    else:
        conn.execute("COMMIT")
    finally:
        conn.isolation_level = saved


def migrate(db: sqlite_utils.Database, path: Path, schema: Schema) -> list[str]:
    """Apply pending migrations; return the names applied. Refuses foreign and newer files."""
    try:
        tables = set(db.table_names())
    except sqlite3.DatabaseError as e:
        raise StoreError(f"{path}: not a readable SQLite database ({e}); refusing to touch it")
    if tables and schema.table not in tables:
        raise StoreError(
            f"{path}: SQLite file with tables {sorted(tables)[:5]} but no {schema.table}: "
            f"not a nightlab {schema.name}; refusing to touch it (move it away or set NIGHTLAB_HOME)"
        )
    table = db[schema.table]
    if not tables:
        table.create({"name": str, schema.stamp_column: type(schema.stamp())}, pk="name")
    done = {row["name"] for row in table.rows}
    if unknown := done - {name for name, _ in schema.migrations}:
        raise StoreError(
            f"{path}: has migrations this nightlab does not know ({sorted(unknown)}): "
            "written by a newer version; refusing to touch it"
        )
    applied = []
    for name, fn in schema.migrations:
        if name in done:
            continue
        with atomic(db.conn):  # all of it or none of it, DDL included
            fn(db)
            table.insert({"name": name, schema.stamp_column: schema.stamp()})
        applied.append(name)
    return applied


def open_database(path: Path, schema: Schema) -> sqlite_utils.Database:
    """connect + migrate, then WAL. Reads first: a foreign or corrupt file is refused unwritten."""
    db = connect(path, f"the {schema.name}")
    migrate(db, path, schema)
    db.execute("PRAGMA journal_mode=WAL")
    return db
