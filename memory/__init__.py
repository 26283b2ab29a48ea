"""Atomic-note memory: SQLite (truth, FTS5) + Chroma (meaning), retrieval, dup gate, compaction.

Importing this package is cheap; chromadb and the embedding model load on first index use.
"""

from memory.notes import LessonDraft, Note, NoteIn, NoteKind
from memory.store import NoteStore

__all__ = ["LessonDraft", "Note", "NoteIn", "NoteKind", "NoteStore"]
