"""The duplicate gate: identical and re-worded repeats are caught, different changes are not."""

from __future__ import annotations

import pytest

from memory import NoteStore
from memory.duplicate import diff_hash, normalize_diff

DIFF = """\
--- a/trainer/train.py
+++ b/trainer/train.py
@@ -10,3 +10,3 @@
 DEPTH = 4  # transformer blocks
-WARMUP_STEPS = 0  # linear warmup
+WARMUP_STEPS = 200  # linear warmup
 MATRIX_LR = 0.02
"""
SAME_DIFF_REFORMATTED = """\
--- a/trainer/train.py
+++ b/trainer/train.py
@@ -11,2 +11,2 @@ def main():
-WARMUP_STEPS=0
+WARMUP_STEPS  =  200   # a longer warmup, reworded comment
"""
OTHER_DIFF = DIFF.replace("200", "50")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> NoteStore:
    # check_duplicate only reads, so one store serves the module (embedding is slow on 2 cores)
    s = NoteStore(tmp_path_factory.mktemp("dup-home"))
    s.add_experiment(
        "c1",
        "nano",
        change="MATRIX_LR 0.02 -> 0.04",
        hypothesis="double the Muon learning rate so the matrices converge faster within the time budget",
        status="discard",
        metric_delta=0.003,
        knob_move="MATRIX_LR 0.02->0.04",
    )
    s.add_experiment(
        "c1",
        "nano",
        change="add warmup",
        hypothesis="a linear warmup of 200 steps stabilises early training",
        status="discard",
        metric_delta=0.001,
        diff=DIFF,
    )
    s.add_experiment(
        "c1",
        "nano",
        change="DEPTH 4 -> 5",
        hypothesis="one more transformer block adds capacity",
        status="keep",
        metric_delta=-0.01,
        knob_move="DEPTH 4->5",
    )
    return s


def test_identical_knob_move(store: NoteStore) -> None:
    hit = store.check_duplicate("nano", "matrix_lr  0.02->0.04", None, "anything at all")
    assert hit is not None and hit.knob_move == "MATRIX_LR 0.02->0.04"


def test_identical_text(store: NoteStore) -> None:
    text = "MATRIX_LR 0.02 -> 0.04: double the Muon learning rate so the matrices converge faster within the time budget"
    hit = store.check_duplicate("nano", None, None, text)
    assert hit is not None and hit.knob_move == "MATRIX_LR 0.02->0.04"


def test_reworded_repeat(store: NoteStore) -> None:
    text = "MATRIX_LR 0.02 -> 0.04: raise the Muon step size to twice its value; should train faster in the fixed budget"
    hit = store.check_duplicate("nano", None, None, text)
    assert hit is not None and hit.knob_move == "MATRIX_LR 0.02->0.04"


def test_same_diff_modulo_whitespace_and_comments(store: NoteStore) -> None:
    assert diff_hash(SAME_DIFF_REFORMATTED) == diff_hash(DIFF)
    hit = store.check_duplicate(
        "nano", None, SAME_DIFF_REFORMATTED, "try something about the schedule"
    )
    assert hit is not None and hit.diff_hash == diff_hash(DIFF)


@pytest.mark.parametrize(
    ("move", "diff", "text"),
    [
        (
            "MATRIX_LR 0.02->0.01",
            None,
            "MATRIX_LR 0.02 -> 0.01: halve the Muon learning rate so the matrices train more stably",
        ),
        (
            None,
            None,
            "MATRIX_LR 0.02 -> 0.01: halve the Muon learning rate so the matrices train more stably",
        ),
        ("DEPTH 5->6", None, "DEPTH 5 -> 6: one more transformer block adds capacity"),
        (None, OTHER_DIFF, "a linear warmup of 50 steps stabilises early training"),
        (None, None, "USE_VALUE_EMBEDS True -> False: drop value embeddings to save parameters"),
        (None, None, "TOTAL_BATCH_TOKENS 2**14 -> 2**15: larger batches give less noisy gradients"),
    ],
)
def test_genuinely_different_change_passes(
    store: NoteStore, move: str | None, diff: str | None, text: str
) -> None:
    assert store.check_duplicate("nano", move, diff, text) is None


def test_other_target_is_not_a_duplicate(store: NoteStore) -> None:
    assert (
        store.check_duplicate(
            "other-target", "MATRIX_LR 0.02->0.04", DIFF, "double the Muon learning rate"
        )
        is None
    )


def test_normalize_diff_keeps_only_changed_lines() -> None:
    assert normalize_diff(DIFF) == ["-WARMUP_STEPS=0", "+WARMUP_STEPS=200"]
    assert normalize_diff('x = "a # b"  # comment') == ['x="a#b"']
    assert diff_hash("# only a comment\n   \n") is None
