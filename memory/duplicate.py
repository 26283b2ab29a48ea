"""The duplicate gate: has this change already been tried on this target?

Three checks, cheapest first, against experiment notes (superseded ones included: a merged
experiment was still run):
1. the same normalized knob move;
2. the same normalized diff (hash of the changed lines, blind to whitespace and # comments);
3. embedding similarity >= the store's threshold with an experiment note's text, unless the
   structured facts disagree: both sides name *different* knob moves, or both mention numbers
   and neither set of numbers contains the other ("0.02 -> 0.04" vs "0.02 -> 0.01"). MiniLM
   scores "double the LR" vs "halve the LR" ~0.95, so text alone cannot tell them apart.
"""

from __future__ import annotations

import hashlib
import re
from typing import TYPE_CHECKING

from memory.notes import Note, normalize_knob_move

if TYPE_CHECKING:
    from memory.notebook import Notebook

_NUMBER = re.compile(r"(?<![A-Za-z_])\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


def _strip_comment(line: str) -> str:
    """Drop a trailing # comment, leaving '#' inside quotes alone (single-line strings only)."""
    quote: str | None = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote and line[i - 1] != "\\":
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#":
            return line[:i]
    return line


def normalize_diff(diff: str) -> list[str]:
    """The changed lines of a unified diff (or all lines of a plain snippet), each with its
    +/- sign, comments and all whitespace removed, empty lines dropped."""
    lines = diff.splitlines()
    unified = any(ln.startswith(("@@", "+++ ", "--- ")) for ln in lines)
    out = []
    for ln in lines:
        sign = ""
        if unified:
            if ln.startswith(("+++ ", "--- ", "@@")) or not ln.startswith(("+", "-")):
                continue
            sign, ln = ln[0], ln[1:]
        body = re.sub(r"\s+", "", _strip_comment(ln))
        if body:
            out.append(sign + body)
    return out


def diff_hash(diff: str) -> str | None:
    lines = normalize_diff(diff)
    if not lines:
        return None  # a comment/whitespace-only diff changes nothing we can compare
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def _numbers(text: str) -> set[float]:
    return {float(m) for m in _NUMBER.findall(text)}


def _conflict(a: str, b: str) -> bool:
    na, nb = _numbers(a), _numbers(b)
    return bool(na and nb and not (na <= nb or nb <= na))


def check_duplicate(
    store: Notebook, target: str, knob_move: str | None, diff: str | None, text: str
) -> Note | None:
    """The matching experiment note, or None when the change looks new."""
    move = normalize_knob_move(knob_move)
    q = "select * from notes where kind='experiment' and target=? and {} = ? order by id desc limit 1"
    if move:
        for row in store.db.query(q.format("knob_move"), [target, move]):
            return Note.from_row(row)
    h = diff_hash(diff) if diff else None
    if h:
        for row in store.db.query(q.format("diff_hash"), [target, h]):
            return Note.from_row(row)
    if not text.strip():
        return None
    for note_id, sim in store.vector_hits(text, 5, target=target, kinds=["experiment"]):
        if sim < store.dup_threshold:
            break
        note = store.get(note_id)
        if move and note.knob_move and note.knob_move != move:
            continue
        if _conflict(text, note.text):
            continue
        return note
    return None


def tried_knob_moves(store: Notebook, target: str, moves: list[str]) -> dict[str, Note]:
    """For each absolute knob move ("DEPTH 4->8") already noted on `target`: its newest experiment
    note, keyed by the normalized move. One query, so the proposer can be offered only new moves."""
    wanted = {m for m in (normalize_knob_move(x) for x in moves) if m}
    if not wanted:
        return {}
    marks = ", ".join("?" for _ in wanted)
    rows = store.db.query(
        f"select * from notes where kind='experiment' and target=? and knob_move in ({marks}) "
        "order by id",
        [target, *sorted(wanted)],
    )
    return {row["knob_move"]: Note.from_row(row) for row in rows}  # newest wins

