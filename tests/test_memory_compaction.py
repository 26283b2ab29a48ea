"""Compaction (fallback and injected summarize) and refutation, on a real store."""

from __future__ import annotations

from pathlib import Path

import pytest

from memory import LessonDraft, Note, NoteIn, NoteStore
from memory.errors import StoreError


def _lr_runs(store: NoteStore) -> list[Note]:
    return [
        store.add_experiment(
            "c1",
            "nano",
            hypothesis=f"faster convergence, try {i}",
            change="MATRIX_LR 0.02 -> 0.04",
            status="discard",
            metric_delta=d,
            knob_move="MATRIX_LR 0.02->0.04",
            commit=f"c{i}",
        )
        for i, d in enumerate([0.004, 0.002, 0.003])
    ]


def test_fallback_compaction_supersedes_and_cites(tmp_path: Path) -> None:
    store = NoteStore(tmp_path)
    runs = _lr_runs(store)
    lone = store.add_experiment(
        "c1",
        "nano",
        hypothesis="capacity",
        change="DEPTH 4 -> 5",
        status="keep",
        metric_delta=-0.01,
        knob_move="DEPTH 4->5",
    )
    insights = [
        store.add_note(
            NoteIn(campaign="c2", target="nano", kind="insight", text=t, tags=["warmup"])
        )
        for t in (
            "Warmup beyond 100 steps wastes budget.",
            "No warmup made the first steps unstable.",
        )
    ]
    lessons = store.compact("nano")
    assert len(lessons) == 2
    move = next(l for l in lessons if l.knob_move)
    assert move.kind == "lesson" and move.effect == "hurts"
    assert move.metric_delta == pytest.approx(0.003)
    assert "tried 3x (3 discard)" in move.text and "+0.0030" in move.text
    assert move.evidence[:3] == [f"note:{r.id}" for r in runs]
    assert {"commit:c0", "commit:c1", "commit:c2"} <= set(move.evidence)
    tag = next(l for l in lessons if not l.knob_move)
    assert tag.tags == ["warmup"] and tag.evidence == [f"note:{n.id}" for n in insights]
    for n in [*runs, *insights]:
        assert store.get(n.id).superseded_by in {move.id, tag.id}  # marked, never deleted
    assert store.get(lone.id).current  # a group of one is not a lesson
    assert store.count() == 8
    assert store.compact("nano") == []  # nothing left to merge


def test_fallback_folds_previous_lesson_on_same_move(tmp_path: Path) -> None:
    store = NoteStore(tmp_path)
    _lr_runs(store)
    first = store.compact("nano")[0]
    store.add_experiment(
        "c2",
        "nano",
        hypothesis="again",
        change="MATRIX_LR 0.02 -> 0.04",
        status="discard",
        metric_delta=0.005,
        knob_move="MATRIX_LR 0.02->0.04",
    )
    second = store.compact("nano")
    assert len(second) == 1 and "tried 4x" in second[0].text
    assert store.get(first.id).superseded_by == second[0].id
    assert f"note:{first.id}" in second[0].evidence


def test_injected_summarize_gets_current_notes_and_its_drafts_are_checked(tmp_path: Path) -> None:
    store = NoteStore(tmp_path)
    runs = _lr_runs(store)
    seen: list[list[int]] = []

    def summarize(notes: list[Note]) -> list[LessonDraft]:
        seen.append([n.id for n in notes])
        return [
            LessonDraft(
                text="Doubling MATRIX_LR hurts at this scale.",
                note_ids=[runs[0].id, runs[1].id, 4242],
                knob_move="MATRIX_LR 0.02->0.04",
                effect="hurts",
                confidence=0.8,
            ),
            LessonDraft(text="Cites only notes that do not exist.", note_ids=[777]),
        ]

    lessons = store.compact("nano", summarize)
    assert seen == [[r.id for r in runs]]
    assert len(lessons) == 1 and lessons[0].evidence[:2] == [
        f"note:{runs[0].id}",
        f"note:{runs[1].id}",
    ]
    assert store.get(runs[0].id).superseded_by == lessons[0].id
    assert store.get(runs[2].id).current  # not cited, so not superseded


def test_manual_refute(tmp_path: Path) -> None:
    store = NoteStore(tmp_path)
    _lr_runs(store)
    lesson = store.compact("nano")[0]
    later = store.add_note(
        NoteIn(campaign="c3", target="nano", kind="insight", text="LR doubling worked with warmup.")
    )
    refuted = store.refute(lesson.id, later.id)
    assert refuted.refuted_by == later.id and not refuted.current
    assert "REFUTED" in refuted.to_prompt()
    with pytest.raises(StoreError, match="not a lesson"):
        store.refute(later.id, lesson.id)


def test_later_keep_with_same_move_refutes_hurts_lesson(tmp_path: Path) -> None:
    store = NoteStore(tmp_path)
    _lr_runs(store)
    lesson = store.compact("nano")[0]
    assert lesson.effect == "hurts"
    store.add_experiment(
        "c2",
        "nano",
        hypothesis="other move",
        change="DEPTH 4 -> 5",
        status="keep",
        metric_delta=-0.01,
        knob_move="DEPTH 4->5",
    )
    assert store.get(lesson.id).current  # a keep of another move says nothing about this lesson
    keep = store.add_experiment(
        "c2",
        "nano",
        hypothesis="with the new depth it works",
        change="MATRIX_LR 0.02 -> 0.04",
        status="keep",
        metric_delta=-0.002,
        knob_move="MATRIX_LR 0.02->0.04",
    )
    assert store.get(lesson.id).refuted_by == keep.id
    assert "Doubling" not in store.context_for("learning rate", "nano", 500)
    assert f"lesson #{lesson.id}" not in store.context_for("learning rate", "nano", 500)


def test_later_discard_of_same_move_refutes_helps_lesson(tmp_path: Path) -> None:
    store = NoteStore(tmp_path)
    runs = [
        store.add_experiment("c1", "nano", hypothesis="deeper", change="DEPTH 4 -> 5", status="keep",
                             metric_delta=d, knob_move="DEPTH 4->5", commit=f"k{i}")  # fmt: skip
        for i, d in enumerate([-0.01, -0.012])
    ]
    lesson = store.compact("nano")[0]
    assert lesson.effect == "helps" and all(not store.get(r.id).current for r in runs)
    crash = store.add_experiment("c2", "nano", hypothesis="deeper again", change="DEPTH 4 -> 5",
                                 status="crash", knob_move="DEPTH 4->5")  # fmt: skip
    assert store.get(lesson.id).current  # a crash is about the code, not the move's effect
    discard = store.add_experiment("c2", "nano", hypothesis="deeper, new base", change="DEPTH 4 -> 5",
                                   status="discard", metric_delta=0.004, knob_move="DEPTH 4->5")  # fmt: skip
    assert crash.id < discard.id
    assert store.get(lesson.id).refuted_by == discard.id


def test_experiment_note_is_written_once_per_experiment_id(tmp_path: Path) -> None:
    """A campaign killed between writing a note and marking it noted writes it again on resume."""
    store = NoteStore(tmp_path)
    kw = dict(hypothesis="h", change="DEPTH 4 -> 5", status="discard", knob_move="DEPTH 4->5")
    first = store.add_experiment("c1", "nano", experiment_id="c1:3", **kw)
    again = store.add_experiment("c1", "nano", experiment_id="c1:3", **kw)
    other = store.add_experiment("c1", "nano", experiment_id="c1:31", **kw)
    elsewhere = store.add_experiment("c2", "nano", experiment_id="c1:3", **kw)
    assert again.id == first.id and len({first.id, other.id, elsewhere.id}) == 3
    assert store.count() == 3 and store.verify()


def test_a_model_gets_one_batch_that_fits_its_token_budget(tmp_path: Path) -> None:
    """Thousands of current notes (memory shared across campaigns) must not overflow a 4k-context
    compactor: it gets the oldest that fit the budget, the rest wait for the next compaction."""
    from memory.compaction import compact
    from memory.tokens import count_tokens

    store = NoteStore(tmp_path)
    notes = store.add_notes([
        NoteIn(campaign="c", target="nano", kind="insight",
               text=f"observation {i}: " + "the loss curve flattened early and stayed flat " * 6)
        for i in range(60)
    ])  # fmt: skip
    seen: list[list[Note]] = []

    def summarize(batch: list[Note]) -> list[LessonDraft]:
        seen.append(batch)
        return [LessonDraft(text="loss flattens early", note_ids=[n.id for n in batch])]

    compact(store, "nano", summarize, budget_tokens=600)
    first = seen[0]
    assert 2 <= len(first) < len(notes)
    assert sum(count_tokens(n.to_prompt()) + 1 for n in first) <= 600
    assert [n.id for n in first] == [n.id for n in notes[: len(first)]]  # oldest first
    compact(store, "nano", summarize, budget_tokens=600)
    assert seen[1][0].id == notes[len(first)].id  # the next batch picks up where this one ended
