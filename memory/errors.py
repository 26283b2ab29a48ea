"""memory's own small error types. The application that uses memory decides how they reach a user."""

from __future__ import annotations


class NotesError(Exception):
    """Base class of everything memory raises on purpose."""


class StoreError(NotesError):
    """A file, index or model the store needs is missing, foreign, damaged or newer than this code."""


class SpecError(NotesError):
    """A setting the caller handed in (e.g. the embedding spec) is invalid; names the field."""

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")
