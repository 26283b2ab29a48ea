"""Atomic notes: one fact with its evidence. SQLite rows <-> pydantic models.

An experiment note's `text` says what was tried ("<change>: <hypothesis>"); its outcome lives in
the structured fields (`status`, `metric`, `metric_delta`), so the embedding of `text` compares
*what was tried* and is not diluted by result numbers (that is what the duplicate gate needs).
`metric_delta` is the change in val_bpb versus the baseline: negative is better.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

NoteKind = Literal["experiment", "insight", "direction", "lesson", "rejection"]
NOTE_KINDS: tuple[str, ...] = ("experiment", "insight", "direction", "lesson", "rejection")
# inconclusive: a discard inside the noise; beaten: it passed the keep rule, but another change
# from the same parent did more, and that one was kept (it helped; it is not in the best)
Status = Literal["keep", "discard", "inconclusive", "crash", "beaten"]
HELPED: tuple[str, ...] = ("keep", "beaten")  # statuses that are evidence a change helps
# What a lesson claims about its knob move; the refutation rule reads it (see compaction.py).
Effect = Literal["helps", "hurts", "no_effect", "unclear"]


def normalize_knob_move(move: str | None) -> str | None:
    """'matrix_lr   X2' -> 'MATRIX_LR x2'. Knob name upper-case, the move lower-case, one space.

    Callers should pass an absolute move when they have it ("DEPTH 4->5"): a relative move like
    "DEPTH +1" means a different change once a keep has moved the baseline.
    """
    if move is None or not move.strip():
        return None
    parts = move.split()
    return " ".join([parts[0].upper(), *(p.lower() for p in parts[1:])])


class NoteIn(BaseModel):
    """What a caller writes. The store fills in id, created and the supersede/refute links."""

    model_config = ConfigDict(extra="forbid")

    campaign: str
    target: str
    kind: NoteKind
    text: str = Field(min_length=1)
    tags: list[str] = []
    knob_move: str | None = None
    diff_hash: str | None = None
    status: Status | None = None
    metric: float | None = None
    metric_delta: float | None = None
    confidence: float | None = Field(default=None, ge=0.0, le=1.0)
    effect: Effect | None = None
    evidence: list[str] = []  # experiment ids, commits ("commit:abc123"), cited notes ("note:7")

    @field_validator("knob_move")
    @classmethod
    def _norm_move(cls, v: str | None) -> str | None:
        return normalize_knob_move(v)


class Note(NoteIn):
    id: int
    created: str
    superseded_by: int | None = None
    refuted_by: int | None = None

    @property
    def current(self) -> bool:
        return self.superseded_by is None and self.refuted_by is None

    def to_prompt(self) -> str:
        """One compact line (or two) for a role prompt."""
        head = [f"{self.kind} #{self.id}"]
        if self.status:
            head.append(self.status)
        if self.metric_delta is not None:
            head.append(f"Δval_bpb {self.metric_delta:+.4f}")
        if self.effect and self.kind == "lesson":
            head.append(self.effect)
        if self.confidence is not None:
            head.append(f"conf {self.confidence:.2f}")
        if self.refuted_by is not None:
            head.append(f"REFUTED by #{self.refuted_by}")
        elif self.superseded_by is not None:
            head.append(f"superseded by #{self.superseded_by}")
        line = f"[{', '.join(head)}] {self.text.strip()}"
        if self.evidence and self.kind == "lesson":
            line += f" (evidence: {', '.join(self.evidence[:12])}"
            line += ", ...)" if len(self.evidence) > 12 else ")"
        return line

    # ---- SQLite row mapping ----
    def to_row(self) -> dict[str, Any]:
        row = self.model_dump()
        row["tags"] = json.dumps(self.tags)
        row["evidence"] = json.dumps(self.evidence)
        return row

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Note:
        data = dict(row)
        data["tags"] = json.loads(data.get("tags") or "[]")
        data["evidence"] = json.loads(data.get("evidence") or "[]")
        return cls.model_validate(data)


def experiment_text(change: str, hypothesis: str) -> str:
    """The canonical text of an experiment note: the change in one line, then why."""
    change, hypothesis = change.strip(), hypothesis.strip()
    return f"{change}: {hypothesis}" if hypothesis else change


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


class LessonDraft(BaseModel):
    """What the compactor role (or the deterministic fallback) proposes: one lesson."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1, description="The lesson in one or two sentences.")
    note_ids: list[int] = Field(min_length=1, description="Ids of the notes this lesson merges.")
    knob_move: str | None = Field(default=None, description="The knob move it is about, if any.")
    effect: Effect = "unclear"
    metric_delta: float | None = Field(default=None, description="Mean Δval_bpb behind it.")
    confidence: float = Field(default=0.5, ge=0.0, le=1.0)
    tags: list[str] = []
