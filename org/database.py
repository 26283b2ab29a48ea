"""SQLite files nightlab owns (a campaign's ledger.db, the shared memory.db): opening and transactions.

`connect` checks the file before anything reads or writes it, so a damaged file is refused with
its path instead of failing later with a bare "database disk image is malformed".

`atomic` exists because Python's sqlite3 (legacy transaction control, as sqlite-utils uses it)
opens a transaction only before INSERT/UPDATE/DELETE: a CREATE TABLE or sqlite-utils' `enable_fts`
(an executescript) runs in autocommit, so `with conn:` around a migration does not make it
atomic. A kill between two statements would leave half a migration that the next start fails on.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlite_utils

from org.errors import HarnessError


def connect(path: Path, what: str) -> sqlite_utils.Database:
    """Open `path`; refuse it (HarnessError naming it) if it is not SQLite or fails quick_check.

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
        raise HarnessError(f"{path}: {what} is not a readable SQLite database ({e}); "
                           "refusing to touch it") from e  # fmt: skip
    if verdict != ["ok"]:
        conn.close()
        raise HarnessError(f"{path}: {what} is damaged (quick_check: {'; '.join(verdict)}); "
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
