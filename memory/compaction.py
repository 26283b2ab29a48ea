"""Compaction: merge related current experiment/insight notes into lessons that cite them.

With a `summarize` callable (the compactor role, wired by the org engineer) the model proposes
LessonDrafts; drafts citing notes outside the batch are trimmed to the batch, and drafts citing
nothing valid are dropped (logged: a model error, not a harness one). Without one, the
deterministic fallback groups by knob move (experiments) or first tag (insights).
Originals are marked superseded by the lesson, never deleted.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from statistics import mean
from typing import TYPE_CHECKING

import structlog

from memory.notes import HELPED, Effect, LessonDraft, Note

if TYPE_CHECKING:
    from memory.notebook import Notebook

log = structlog.get_logger(__name__)
MIN_GROUP = 2  # a lesson needs at least this many notes behind it
NOISE = 0.0005  # |mean Δ| below this is "no effect" when the caller knows no noise floor


def _candidates(store: Notebook, target: str) -> list[Note]:
    return [
        n
        for kind in ("experiment", "insight")
        for n in store.notes(target=target, kind=kind, current_only=True)
    ]


BATCH_TOKENS = 2000  # notes per model batch: the compactor's prompt must fit a 4k-context model


def _batch(notes: list[Note], budget_tokens: int) -> list[Note]:
    """The oldest notes whose prompt lines fit `budget_tokens` (at least one); the rest wait for
    the next compaction. Memory shared across campaigns can hold thousands of current notes."""
    from memory.tokens import count_tokens

    out, used = [], 0
    for note in sorted(notes, key=lambda n: n.id):
        cost = count_tokens(note.to_prompt()) + 1  # +1: the newline between notes
        if out and used + cost > budget_tokens:
            break
        out.append(note)
        used += cost
    return out


def compact(
    store: Notebook,
    target: str,
    summarize: Callable[[list[Note]], list[LessonDraft]] | None,
    budget_tokens: int = BATCH_TOKENS,
) -> list[Note]:
    """Write lessons for `target` from one batch of its current notes (the oldest that fit
    `budget_tokens` when a model summarizes); returns the new lesson notes (possibly none)."""
    notes = _candidates(store, target)
    if summarize is not None:
        notes = _batch(notes, budget_tokens)
    # One new note can still fold into a previous lesson (fallback); a model needs a real batch.
    if not notes or (summarize is not None and len(notes) < MIN_GROUP):
        return []
    drafts = summarize(notes) if summarize is not None else fallback_drafts(store, target, notes)
    by_id = {n.id: n for n in notes}
    # The fallback may fold a previous lesson on the same move into the new one.
    by_id.update({n.id: n for n in store.notes(target=target, kind="lesson", current_only=True)})
    lessons = []
    for draft in drafts:
        ids = [i for i in dict.fromkeys(draft.note_ids) if i in by_id and by_id[i].current]
        if not ids:
            log.warning(
                "lesson draft cites no current note of this batch; dropped", draft=draft.text
            )
            continue
        if len(ids) != len(draft.note_ids):
            log.warning("lesson draft cited unknown notes; trimmed", cited=draft.note_ids, kept=ids)
        campaign = by_id[max(ids)].campaign
        lesson = store.add_lesson(campaign, target, draft.model_copy(update={"note_ids": ids}))
        for i in ids:
            by_id[i] = store.get(i)  # now superseded: a later draft cannot cite it again
        lessons.append(lesson)
    return lessons


def _effect(deltas: list[float], statuses: list[str], noise: float) -> Effect:
    if not deltas:
        return "hurts" if statuses and all(s == "crash" for s in statuses) else "unclear"
    m = mean(deltas)
    helped = any(s in HELPED for s in statuses)
    if helped and m < 0:
        return "helps"
    if not helped and m > noise:
        return "hurts"
    if abs(m) <= noise and not helped:
        return "no_effect"
    return "unclear"


def _experiments_behind(store: Notebook, lesson: Note) -> list[Note]:
    ids = [int(e.split(":", 1)[1]) for e in lesson.evidence if e.startswith("note:")]
    return [n for n in (store.get(i) for i in ids) if n.kind == "experiment"]


def fallback_drafts(store: Notebook, target: str, notes: list[Note], noise: float | None = None) -> list[LessonDraft]:
    """Group experiments by knob move and insights by first tag; one lesson per group of >= 2
    (counting experiments behind a current lesson on the same move, which is then folded in).
    `noise` is the measured noise floor (the run-to-run standard deviation): a mean delta inside
    it is "no effect"."""
    noise = NOISE if noise is None else noise
    groups: dict[tuple[str, str], list[Note]] = defaultdict(list)
    for n in notes:
        if n.kind == "experiment" and n.knob_move:
            groups[("move", n.knob_move)].append(n)
        elif n.tags:
            groups[("tag", n.tags[0])].append(n)
    prior: dict[str, Note] = {}
    for lesson in store.notes(target=target, kind="lesson", current_only=True):
        if lesson.knob_move:
            prior.setdefault(lesson.knob_move, lesson)
    drafts = []
    for (how, key), members in sorted(groups.items()):
        old = prior.get(key) if how == "move" else None
        behind = (_experiments_behind(store, old) if old else []) + [
            m for m in members if m.kind == "experiment"
        ]
        if len(members) + (1 if old else 0) < MIN_GROUP:
            continue
        ids = [m.id for m in members] + ([old.id] if old else [])
        if how == "move":
            statuses = [m.status or "?" for m in behind]
            deltas = [m.metric_delta for m in behind if m.metric_delta is not None]
            effect = _effect(deltas, statuses, noise)
            counts = ", ".join(
                f"{statuses.count(s)} {s}" for s in ("keep", "beaten", "discard", "inconclusive", "crash") if s in statuses
            )
            md = f"mean Δval_bpb {mean(deltas):+.4f} over {len(deltas)}" if deltas else "no metric"
            text = f"Knob move {key}: tried {len(behind)}x ({counts}); {md}; verdict: {effect.replace('_', ' ')}."
            agree = (
                sum(1 for d in deltas if (d > 0) == (mean(deltas) > 0)) / len(deltas)
                if deltas
                else 0.0
            )
            drafts.append(
                LessonDraft(
                    text=text,
                    note_ids=ids,
                    knob_move=key,
                    effect=effect,
                    metric_delta=round(mean(deltas), 6) if deltas else None,
                    confidence=round(min(1.0, agree * min(1.0, len(behind) / 4)), 2),
                )
            )
        else:
            joined = " | ".join(m.text.strip() for m in members[:6])
            drafts.append(
                LessonDraft(
                    text=f"On '{key}' ({len(members)} notes): {joined}",
                    note_ids=ids,
                    tags=[key],
                    confidence=0.5,
                )
            )
    return drafts
