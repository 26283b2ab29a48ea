"""Knob parsing/moves (byte-for-byte rewrites) and search/replace edits."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from org.errors import InputError
from org.knobs import set_knobs
from org.proposal import (
    EditProposal,
    SearchReplace,
    apply_edits,
    apply_knob_move,
    knob_schema,
    offered_moves,
    parse_knobs,
    within,
)

TRAIN = '''"""Editable target."""
import math  # not a knob

DEPTH = 4  # transformer blocks
MATRIX_LR = 0.02  # Muon learning rate
EMBED_LR: float = 3e-4  # AdamW lr for embeddings
USE_VALUE_EMBEDS = True  # value embeddings on alternate layers
TOTAL_BATCH_TOKENS = 2**14  # tokens per optimizer step
WARMDOWN = 64 * 2  # steps of linear decay, é ü
WINDOW = -1  # attention window (-1 = full)
OPTIM = "muon"  # optimizer name
PLAIN = 7
SPLIT = (
    3)  # multi-line values are not knobs
lowercase = 1  # not upper-case
A, B = 1, 2  # tuple targets are not knobs
SEQ = math.e  # not a constant

def main():
    INNER = 5  # not top level
'''


def test_parse_knobs_types_values_and_comments() -> None:
    knobs = {k.name: k for k in parse_knobs(TRAIN)}
    assert list(knobs) == ["DEPTH", "MATRIX_LR", "EMBED_LR", "USE_VALUE_EMBEDS",
                           "TOTAL_BATCH_TOKENS", "WARMDOWN", "WINDOW", "OPTIM"]
    assert (knobs["DEPTH"].value, knobs["DEPTH"].type) == (4, "int")
    assert knobs["EMBED_LR"].value == 3e-4 and knobs["EMBED_LR"].type == "float"
    assert knobs["USE_VALUE_EMBEDS"].type == "bool" and knobs["OPTIM"].type == "str"
    assert knobs["TOTAL_BATCH_TOKENS"].value == 16384 and knobs["TOTAL_BATCH_TOKENS"].expr == "2**14"
    assert knobs["WARMDOWN"].value == 128 and knobs["WARMDOWN"].comment == "steps of linear decay, é ü"
    assert knobs["WINDOW"].value == -1
    assert knobs["MATRIX_LR"].comment == "Muon learning rate" and knobs["MATRIX_LR"].lineno == 5


@pytest.mark.parametrize(
    ("knob", "move", "line"),
    [
        ("DEPTH", "x2", "DEPTH = 8  # transformer blocks"),
        ("DEPTH", "x0.67", "DEPTH = 3  # transformer blocks"),
        ("DEPTH", "-1", "DEPTH = 3  # transformer blocks"),
        ("MATRIX_LR", "x1.5", "MATRIX_LR = 0.03  # Muon learning rate"),
        ("EMBED_LR", "x0.5", "EMBED_LR: float = 0.00015  # AdamW lr for embeddings"),
        ("USE_VALUE_EMBEDS", "toggle", "USE_VALUE_EMBEDS = False  # value embeddings on alternate layers"),
        ("TOTAL_BATCH_TOKENS", "x0.5", "TOTAL_BATCH_TOKENS = 2**13  # tokens per optimizer step"),
        ("TOTAL_BATCH_TOKENS", "x1.5", "TOTAL_BATCH_TOKENS = 24576  # tokens per optimizer step"),
        ("WARMDOWN", "+1", "WARMDOWN = 129  # steps of linear decay, é ü"),
        ("WINDOW", "x2", "WINDOW = -2  # attention window (-1 = full)"),
    ],
)
def test_move_rewrites_only_that_constant(knob: str, move: str, line: str) -> None:
    new, description = apply_knob_move(TRAIN, knob, move)
    old_lines, new_lines = TRAIN.split("\n"), new.split("\n")
    changed = [i for i, (a, b) in enumerate(zip(old_lines, new_lines)) if a != b]
    assert len(old_lines) == len(new_lines) and len(changed) == 1
    assert new_lines[changed[0]] == line
    assert description.startswith(f"{knob} {move}: ") and "\n" not in description
    assert {k.name: k.value for k in parse_knobs(new)}[knob] != {k.name: k.value for k in parse_knobs(TRAIN)}[knob]


def test_crlf_and_missing_final_newline_are_preserved() -> None:
    src = "X = 1  # a\r\nY = 2.5  # b"
    new, _ = apply_knob_move(src, "Y", "x2")
    assert new == "X = 1  # a\r\nY = 5.0  # b"
    new, _ = apply_knob_move(src, "X", "+1")
    assert new == "X = 2  # a\r\nY = 2.5  # b"


def test_bad_moves_name_file_and_field() -> None:
    with pytest.raises(InputError) as e:
        apply_knob_move(TRAIN, "DEPTHS", "x2", path="trainer/train.py")
    assert e.value.path == "trainer/train.py" and e.value.field == "knob" and "DEPTH" in e.value.message
    with pytest.raises(InputError, match="move: move 'toggle' does not apply to int knob DEPTH = 4"):
        apply_knob_move(TRAIN, "DEPTH", "toggle")
    with pytest.raises(InputError, match="allowed: none"):
        apply_knob_move(TRAIN, "OPTIM", "x2")
    with pytest.raises(InputError, match="allowed: x2, x1.5, \\+1, -1"):
        apply_knob_move("N = 1  # n\n", "N", "x0.67")  # would round back to 1
    with pytest.raises(InputError) as e:
        parse_knobs("X = (\n", path="t.py")
    assert e.value.field == "source" and "syntax error" in e.value.message


def test_multiplicative_moves_never_reach_zero() -> None:
    assert apply_knob_move("N = 2  # n\n", "N", "x0.5")[0] == "N = 1  # n\n"
    assert apply_knob_move("N = -2  # n\n", "N", "x0.5")[0] == "N = -1  # n\n"
    # 1 x0.5 would round to 0: clamped to 1, which is no change -> not offered, an error if chosen
    assert "x0.5" not in parse_knobs("N = 1  # n\n")[0].moves
    with pytest.raises(InputError, match="does not apply"):
        apply_knob_move("N = 1  # n\n", "N", "x0.5")


def test_zero_floats_get_additive_moves() -> None:
    knob = parse_knobs("WD = 0.0  # weight decay\n")[0]
    assert knob.moves == ("+0.1", "+0.01")
    assert apply_knob_move("WD = 0.0  # weight decay\n", "WD", "+0.01") == (
        "WD = 0.01  # weight decay\n", "WD +0.01: 0.0 -> 0.01")
    with pytest.raises(InputError, match="does not apply"):
        apply_knob_move("WD = 0.0  # weight decay\n", "WD", "x2")


def test_program_knobs_are_written_in_the_knobs_style() -> None:
    new = set_knobs(TRAIN, {"TOTAL_BATCH_TOKENS": 2**16, "EMBED_LR": 0.000123456, "MATRIX_LR": 1,
                            "WARMDOWN": 32, "USE_VALUE_EMBEDS": False, "OPTIM": "adamw"}, Path("p.md"))
    assert new == (TRAIN.replace("2**14  #", "2**16  #").replace("3e-4  #", "0.000123456  #")  # exact, not 4 digits
                   .replace("0.02  #", "1.0  #").replace("64 * 2  #", "32  #").replace("True  #", "False  #")
                   .replace('"muon"  #', "'adamw'  #"))


def test_knob_schema_is_enum_constrained_per_type() -> None:
    model = knob_schema(parse_knobs(TRAIN))
    ok = model(hypothesis="deeper is better", knob="DEPTH", move="x2")
    assert (ok.knob, ok.move) == ("DEPTH", "x2")
    with pytest.raises(ValidationError, match="choose one of \\['toggle'\\]"):
        model(hypothesis="h", knob="USE_VALUE_EMBEDS", move="x2")
    with pytest.raises(ValidationError):
        model(hypothesis="h", knob="OPTIM", move="x2")  # string knobs are not offered
    with pytest.raises(ValidationError):
        model(hypothesis="x" * 500, knob="DEPTH", move="x2")
    schema = model.model_json_schema()
    branches = {tuple(b["properties"]["move"]["enum"]): b["properties"]["knob"]["enum"] for b in schema["anyOf"]}
    assert branches == {
        ("toggle",): ["USE_VALUE_EMBEDS"],
        ("x2", "x0.5", "x1.5", "x0.67", "+1", "-1"): ["DEPTH", "TOTAL_BATCH_TOKENS", "WARMDOWN"],
        ("x2", "x0.5", "x1.5", "x0.67"): ["MATRIX_LR", "EMBED_LR"],
        ("x2", "x1.5", "+1", "-1"): ["WINDOW"],  # -1 x0.5 / x0.67 would round back to -1
    }
    with pytest.raises(InputError, match="no movable knobs"):
        knob_schema(parse_knobs('A = "s"  # only a string\n'))


FILES = {"train.py": "lr = 1\nlr = 1\nx = 2\n", "model.py": "class M:\n    pass\n"}


def test_apply_edits_in_order_and_errors_name_block() -> None:
    edits = [SearchReplace(path="train.py", search="x = 2", replace="x = 3"),
             SearchReplace(path="model.py", search="    pass", replace="    depth = 2")]
    out = apply_edits(FILES, edits)
    assert out == {"train.py": "lr = 1\nlr = 1\nx = 3\n", "model.py": "class M:\n    depth = 2\n"}
    assert FILES["train.py"].endswith("x = 2\n")  # input untouched

    with pytest.raises(InputError) as e:
        apply_edits(FILES, [edits[0], SearchReplace(path="train.py", search="y = 9", replace="")])
    assert (e.value.path, e.value.field) == ("train.py", "edits[1].search")
    assert "not found: 'y = 9'" in e.value.message
    with pytest.raises(InputError, match="ambiguous \\(2 matches\\)"):
        apply_edits(FILES, [SearchReplace(path="train.py", search="lr = 1", replace="lr = 2")])
    with pytest.raises(InputError) as e:
        apply_edits(FILES, [SearchReplace(path="prepare.py", search="a", replace="b")])
    assert e.value.field == "edits[0].path" and "not an editable file" in e.value.message
    with pytest.raises(InputError, match="empty search"):
        apply_edits(FILES, [SearchReplace(path="train.py", search="", replace="b")])


def test_edit_proposal_description_is_one_line() -> None:
    p = EditProposal(hypothesis="Use a\nlonger warmdown " + "so the lr decays " * 10,
                     edits=[SearchReplace(path="train.py", search="a", replace="b")] * 2)
    d = p.description()
    assert "\n" not in d and d.endswith("... [train.py]") and len(d) <= 100 + len(" [train.py]")
    with pytest.raises(ValidationError):
        EditProposal(hypothesis="h", edits=[])


def test_tried_moves_leave_the_schema_until_none_are_left():
    knobs = parse_knobs("DEPTH = 4  # blocks\nLR = 0.01  # learning rate\n")
    depth = {k.name: k for k in knobs}["DEPTH"]
    tried = {("DEPTH", m) for m in depth.moves} | {("LR", "x2")}
    schema = knob_schema(knobs, tried=tried)
    assert set(schema.knob_moves) == {"LR"} and "x2" not in schema.knob_moves["LR"]
    with pytest.raises(ValidationError):
        schema.model_validate({"hypothesis": "deeper", "knob": "DEPTH", "move": "+1"})
    with pytest.raises(ValidationError):
        schema.model_validate({"hypothesis": "faster", "knob": "LR", "move": "x2"})
    everything = {(k.name, m) for k in knobs for m in k.moves}
    assert offered_moves(knobs, everything) == {k.name: k.moves for k in knobs}  # all tried: all again


def test_search_space_restricts_a_knob_to_listed_moves():
    """`knob_moves` keeps a head size a power of two: x0.67 of 32 is 21, an odd head size."""
    knobs = parse_knobs("HEAD_DIM = 32  # head size\nDEPTH = 4  # blocks\n")
    space = {k.name: k for k in within(knobs, lambda n: False, {"HEAD_DIM": (20, 128)},
                                       {"HEAD_DIM": ["x0.5", "x2"]})}  # fmt: skip
    assert space["HEAD_DIM"].moves == ("x2",)  # x0.5 (16) leaves the range; x0.67 (21) not listed
    assert space["DEPTH"].moves == ("x2", "x0.5", "x1.5", "x0.67", "+1", "-1")  # not restricted
    schema = knob_schema(list(space.values()))
    with pytest.raises(ValidationError):
        schema.model_validate({"hypothesis": "h", "knob": "HEAD_DIM", "move": "+1"})


def test_search_space_fixes_knobs_and_keeps_moves_in_range():
    knobs = parse_knobs("DEPTH = 4  # blocks\nMOM = 0.9  # momentum\nSEED = 1  # seed\nGATE = True  # gate\n")
    space = {k.name: k for k in within(knobs, lambda n: n in {"SEED", "GATE"}, {"MOM": (0.5, 0.99), "DEPTH": (2, 6)})}
    assert space["SEED"].moves == () and space["GATE"].moves == ()
    assert space["MOM"].moves == ("x0.67",)  # 1.8, 0.45 and 1.35 leave [0.5, 0.99]
    assert space["DEPTH"].moves == ("x0.5", "x1.5", "x0.67", "+1", "-1")  # x2 (8) leaves [2, 6]
    schema = knob_schema(list(space.values()))
    assert set(schema.knob_moves) == {"MOM", "DEPTH"}
    with pytest.raises(ValidationError):
        schema.model_validate({"hypothesis": "h", "knob": "MOM", "move": "x2"})
    everything = {(k.name, m) for k in space.values() for m in k.moves}
    assert offered_moves(list(space.values()), everything) == {"DEPTH": space["DEPTH"].moves, "MOM": ("x0.67",)}


def test_every_model_written_number_is_a_closed_choice():
    """llama.cpp's JSON-schema grammar bounds strings and enums, not numbers: the compactor's
    confidence is a word the grammar can enforce (a base model once wrote 5 for a 0..1 float)."""
    from org.prompts import LessonOut, Lessons

    schema = Lessons.model_json_schema()
    assert schema["$defs"]["LessonOut"]["properties"]["confidence"]["enum"] == ["low", "medium", "high"]
    out = LessonOut(text="deeper is slower", note_ids=[1, 2], confidence="high")
    assert out.draft().confidence == 0.75
    with pytest.raises(ValidationError):
        LessonOut(text="x", note_ids=[1], confidence=5)
