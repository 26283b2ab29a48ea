"""Atomic-note memory: SQLite (truth, FTS5) + Chroma (meaning), retrieval, dup gate, compaction.

Importing this package is cheap: the names below load on first use (so org can import
memory.errors without pydantic or sqlite-utils), and chromadb and the embedding model load on
first index use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from memory.notes import LessonDraft, Note, NoteIn, NoteKind
    from memory.store import NoteStore

_HOMES = {
    "LessonDraft": "memory.notes",
    "Note": "memory.notes",
    "NoteIn": "memory.notes",
    "NoteKind": "memory.notes",
    "NoteStore": "memory.store",
}
__all__ = ["LessonDraft", "Note", "NoteIn", "NoteKind", "NoteStore"]


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'memory' has no attribute {name!r}")
