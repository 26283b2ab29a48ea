"""Numbered, forward-only schema migrations for memory.db, recorded in `nightlab_migrations`.

Append new migrations at the end; never edit or reorder an applied one (the llm-style scheme).
A database that has tables but no `nightlab_migrations` table is someone else's: we refuse it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import sqlite_utils

from org.database import atomic
from org.errors import HarnessError

MIGRATIONS_TABLE = "nightlab_migrations"
Migration = Callable[[sqlite_utils.Database], None]
MIGRATIONS: list[tuple[str, Migration]] = []


def migration(fn: Migration) -> Migration:
    MIGRATIONS.append((fn.__name__, fn))
    return fn


@migration
def m001_notes(db: sqlite_utils.Database) -> None:
    db["notes"].create(
        {
            "id": int,
            "campaign": str,
            "target": str,
            "kind": str,
            "text": str,
            "tags": str,  # JSON list
            "knob_move": str,
            "diff_hash": str,
            "status": str,
            "metric": float,
            "metric_delta": float,
            "confidence": float,
            "effect": str,
            "evidence": str,  # JSON list
            "created": str,
            "superseded_by": int,
            "refuted_by": int,
        },
        pk="id",
        not_null={"campaign", "target", "kind", "text", "tags", "evidence", "created"},
        defaults={"tags": "[]", "evidence": "[]"},
    )


@migration
def m002_notes_fts(db: sqlite_utils.Database) -> None:
    db["notes"].enable_fts(["text", "tags"], create_triggers=True, tokenize="porter")


@migration
def m003_notes_indexes(db: sqlite_utils.Database) -> None:
    db["notes"].create_index(["target", "kind"])
    db["notes"].create_index(["target", "knob_move"])
    db["notes"].create_index(["target", "diff_hash"])
    db["notes"].create_index(["campaign"])


def migrate(db: sqlite_utils.Database, path: Path) -> list[str]:
    """Apply pending migrations; return the names applied. Raises HarnessError for foreign files."""
    try:
        tables = set(db.table_names())
    except sqlite3.DatabaseError as e:
        raise HarnessError(f"{path}: not a readable SQLite database ({e}); refusing to touch it")
    if tables and MIGRATIONS_TABLE not in tables:
        raise HarnessError(
            f"{path}: SQLite file with tables {sorted(tables)[:5]} but no {MIGRATIONS_TABLE}: "
            "not a nightlab memory database; refusing to touch it (move it away or set NIGHTLAB_HOME)"
        )
    table = db[MIGRATIONS_TABLE]
    if not tables:
        table.create({"name": str, "applied": str}, pk="name")
    done = {row["name"] for row in table.rows}
    known = {name for name, _ in MIGRATIONS}
    if unknown := done - known:
        raise HarnessError(
            f"{path}: has migrations this nightlab does not know ({sorted(unknown)}): "
            "written by a newer version; refusing to touch it"
        )
    applied = []
    for name, fn in MIGRATIONS:
        if name in done:
            continue
        with atomic(db.conn):  # all of it or none of it, DDL included
            fn(db)
            table.insert({"name": name, "applied": datetime.now(UTC).isoformat()})
        applied.append(name)
    return applied
