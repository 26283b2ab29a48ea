"""Notebook: what the modules beside the store (context, duplicate, compaction) need from it.

NoteStore is the notebook; those modules are written against this Protocol, not against
store.py, so the store can use them and nothing in memory imports in a circle.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

import sqlite_utils

from memory.notes import LessonDraft, Note


class Notebook(Protocol):
    db: sqlite_utils.Database
    dup_threshold: float

    def get(self, note_id: int) -> Note: ...

    def notes(
        self,
        *,
        target: str | None = None,
        kind: str | None = None,
        campaign: str | None = None,
        current_only: bool = False,
        limit: int | None = None,
        newest_first: bool = False,
    ) -> list[Note]: ...

    def search(
        self,
        text: str,
        k: int = 10,
        target: str | None = None,
        *,
        kinds: Iterable[str] | None = None,
        current_only: bool = False,
    ) -> list[Note]: ...

    def vector_hits(
        self,
        text: str,
        k: int,
        target: str | None = None,
        kinds: Iterable[str] | None = None,
        current_only: bool = False,
    ) -> list[tuple[int, float]]: ...

    def add_lesson(
        self, campaign: str, target: str, draft: LessonDraft, evidence: Sequence[str] = ()
    ) -> Note: ...
