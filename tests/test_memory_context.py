"""Retrieval into prompts: priorities, and the token budget is never exceeded (property test)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memory import LessonDraft, NoteIn, NoteStore
from memory.tokens import count_tokens, truncate_to_tokens


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> NoteStore:
    s = NoteStore(tmp_path_factory.mktemp("ctx-home"))
    knobs = ["DEPTH", "MATRIX_LR", "EMBED_LR", "WARMUP_STEPS", "TOTAL_BATCH_TOKENS", "SEQ_LEN"]
    for i, knob in enumerate(knobs * 3):
        s.add_experiment(
            "c1",
            "nano",
            hypothesis=f"hypothesis {i} about {knob.lower()} and the budget " * (1 + i % 3),
            change=f"{knob} {i} -> {i + 1}",
            status="discard" if i % 4 else "keep",
            metric_delta=0.001 * (i % 5 - 2),
            knob_move=f"{knob} {i}->{i + 1}",
        )
    for i in range(6):
        s.add_note(
            NoteIn(
                campaign="c1",
                target="nano",
                kind="insight",
                text=f"Insight {i}: " + "evidence " * 30,
            )
        )
    exps = s.notes(kind="experiment")
    for j in range(4):
        s.add_lesson(
            "c1",
            "nano",
            LessonDraft(
                text=f"Lesson {j}: " + "what we learned " * (5 + 10 * j),
                note_ids=[exps[j].id],
                confidence=0.2 * j,
            ),
        )
    s.add_direction("c1", "nano", "Old direction.")
    s.add_direction("c1", "nano", "Current direction: tune the optimizer. " + "Details. " * 200)
    s.add_note(
        NoteIn(campaign="c1", target="elsewhere", kind="lesson", text="Lesson for another target.")
    )
    return s


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    budget=st.integers(min_value=-5, max_value=1500),
    query=st.text(min_size=0, max_size=80),
    k=st.integers(min_value=0, max_value=12),
)
def test_budget_is_never_exceeded(store: NoteStore, budget: int, query: str, k: int) -> None:
    text = store.context_for(query, "nano", budget, k=k)
    assert count_tokens(text) <= max(budget, 0)


def test_priorities_and_filters(store: NoteStore) -> None:
    text = store.context_for("optimizer learning rate", "nano", 1200)
    assert text.startswith("## Memory")
    assert (
        text.index("Current direction")
        < text.index("### Lessons")
        < text.index("### Related notes")
    )
    assert "Old direction" not in text and "another target" not in text
    assert text.index("Lesson 3") < text.index("Lesson 1")  # most confident first
    assert text.count("Details.") == 200  # the direction fits whole at this budget
    small = store.context_for("optimizer learning rate", "nano", 150)
    assert "Current direction: tune" in small and small.rstrip().endswith("…")  # cut to fit
    assert count_tokens(small) <= 150
    for superseded in store.notes(kind="experiment")[:4]:
        assert f"experiment #{superseded.id}," not in text


def test_tiny_budget_gives_empty_block(store: NoteStore) -> None:
    assert store.context_for("anything", "nano", 5) == ""
    assert store.context_for("anything", "nano", 0) == ""


@given(st.text(max_size=300), st.integers(min_value=0, max_value=60))
def test_truncate_to_tokens(text: str, n: int) -> None:
    cut = truncate_to_tokens(text, n)
    assert text.startswith(cut) and count_tokens(cut) <= n
