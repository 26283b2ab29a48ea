"""Retrieval: hybrid search over the notes (Chroma by meaning + FTS5 by identifier), fused by
reciprocal rank. Deterministic for a given index, so a rebuild from SQLite reproduces it.

Works on the SQLite db and the vector index directly; the NoteStore turns ranked ids into notes."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import sqlite_utils

if TYPE_CHECKING:
    from memory.index import NoteIndex

_RRF_K = 60  # reciprocal-rank-fusion constant (Cormack et al.)
_IDENT = re.compile(r"\b[A-Z][A-Z0-9]*_[A-Z0-9_]+\b|\b[A-Z]{3,}[0-9]*\b")  # DEPTH, MATRIX_LR
FilterCounts = dict[tuple[str, tuple[Any, ...]], int]


def search(
    db: sqlite_utils.Database,
    index: NoteIndex,
    counts: FilterCounts,
    text: str,
    k: int,
    target: str | None,
    kinds: Iterable[str] | None,
    current_only: bool,
) -> list[int]:
    """Ids of the k notes most related to `text`, best first."""
    kinds = list(kinds) if kinds is not None else None
    vec = vector_hits(db, index, counts, text, 2 * k, target, kinds, current_only)
    fts = fts_hits(db, text, 2 * k, target, kinds, current_only)
    score: dict[int, float] = {}
    for ranked in ([i for i, _ in vec], fts):
        for rank, i in enumerate(ranked):
            score[i] = score.get(i, 0.0) + 1.0 / (_RRF_K + rank + 1)
    return sorted(score, key=lambda i: (-score[i], i))[:k]


def vector_hits(
    db: sqlite_utils.Database,
    index: NoteIndex,
    counts: FilterCounts,
    text: str,
    k: int,
    target: str | None = None,
    kinds: Iterable[str] | None = None,
    current_only: bool = False,
) -> list[tuple[int, float]]:
    """(note id, cosine similarity) from Chroma, told how many notes pass the filters.

    `counts` caches those numbers per filter; the caller clears it on every write."""
    kinds = list(kinds) if kinds is not None else None
    where, args = [], []
    if target is not None:
        where.append("target = ?")
        args.append(target)
    if kinds is not None:
        where.append(f"kind in ({','.join('?' * len(kinds))})")
        args += kinds
    sql = "select count(*) from notes" + (" where " + " and ".join(where) if where else "")
    key = (sql, tuple(args))
    if key not in counts:  # ~6 ms at 100k notes; reset by every write
        counts[key] = int(db.execute(sql, args).fetchone()[0])
    return index.query(
        text,
        k,
        target,
        kinds,
        current_only,
        matching=counts[key],
        total=int(db.execute("select count(*) from notes").fetchone()[0]),
    )


def fts_hits(
    db: sqlite_utils.Database,
    text: str,
    k: int,
    target: str | None,
    kinds: list[str] | None,
    current_only: bool,
) -> list[int]:
    """Notes that literally name an identifier from `text` (knob names such as MATRIX_LR),
    newest first. Meaning is the vector side's job; ranking every common word with bm25
    took ~100 ms at 100k notes, walking the FTS index by rowid with a LIMIT does not."""
    terms = list(dict.fromkeys(_IDENT.findall(text)))[:12]
    if not terms:
        return []
    sql = (
        "select notes.id from notes_fts join notes on notes.id = notes_fts.rowid "
        "where notes_fts match ?"
    )
    args: list[Any] = [" OR ".join(f'"{t}"' for t in terms)]
    if target is not None:
        sql += " and notes.target = ?"
        args.append(target)
    if kinds is not None:
        sql += f" and notes.kind in ({','.join('?' * len(kinds))})"
        args += kinds
    if current_only:
        sql += " and notes.superseded_by is null and notes.refuted_by is null"
    sql += " order by notes_fts.rowid desc limit ?"
    return [r[0] for r in db.execute(sql, [*args, k])]
