"""memory.db's numbered, forward-only schema migrations, recorded in `nightlab_migrations`.

Append new migrations at the end; never edit or reorder an applied one (the llm-style scheme).
How they are applied, and which files are refused, is memory/database.py's job.
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlite_utils

from memory.database import Migration, Schema

MIGRATIONS_TABLE = "nightlab_migrations"
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


def schema() -> Schema:
    """memory.db's schema, read when a store opens (so the list may still grow in tests)."""
    return Schema("memory database", MIGRATIONS_TABLE, MIGRATIONS, "applied", _now)


def _now() -> str:
    return datetime.now(UTC).isoformat()
