"""Bad programs, orgs and roles: a clear error naming file and field, exit 2, and an existing
campaign's records untouched."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from org import campaign as c
from org.cli import main
from org.errors import InputError
from org.program import load_program
from tests.scripted import ScriptedClient
from tests.tiny import APPROVE, DIRECTIVE, knob, make_repo, program_text

ROLES = Path(__file__).resolve().parents[1] / "roles"


def _digest(tag: str) -> dict[str, str]:
    d = c.campaign_dir(tag)
    files = ["results.tsv", "ledger.db", "campaign.json", "checkpoints.db"]
    return {f: hashlib.sha256((d / f).read_bytes()).hexdigest() for f in files}


@pytest.fixture
def existing(tmp_path):
    """A finished 1-experiment campaign whose records must survive every bad input below."""
    program = make_repo(tmp_path / "repo")
    client = ScriptedClient(script={"proposer": [knob("LR", "x2")]},
                            default={"director": DIRECTIVE, "reviewer": APPROVE})
    c.start(program, ROLES / "tiered", tag="old", max_experiments=1, models=client)
    return program, _digest("old")


def _cli(args: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        main(args)
    return exc.value.code, capsys.readouterr().err


@pytest.mark.parametrize("front, field, words", [
    ({"metric": None}, "metric", "Field required"),
    ({"colour": "red"}, "colour", "Extra inputs"),
    ({"direction": "sideways"}, "direction", "'min' or 'max'"),
    ({"editable": "[missing.py]"}, "editable", "does not exist"),
    ({"protected": "[nope.py]"}, "protected", "does not exist"),
    ({"stop": "{max_experiments: -1}"}, "stop.max_experiments", "greater than or equal"),
    ({"env": "{OPENAI_API_KEY: x}"}, "env", "secret"),
    ({"env": "{GITHUB_PAT: x}"}, "env", "secret"),  # the env policy's detector, not just *_KEY
    ({"parse": "{kind: regex}"}, "parse", "regex"),
    ({"sandbox": "{hides: [/usr/lib/python3.11/idlelib]}"}, "sandbox.hides", "directory name"),
    ({"sandbox": "{hides: ['..']}"}, "sandbox.hides", "directory name"),
    ({"fan_out": "0"}, "fan_out", "greater than or equal to 1"),
    ({"fan_out": "two"}, "fan_out", "valid integer"),
])
def test_bad_program_fields(tmp_path, front, field, words):
    program = make_repo(tmp_path / "r")
    program.write_text(program_text(**front))
    with pytest.raises(InputError) as e:
        load_program(program)
    assert e.value.path == str(program) and e.value.field == field and words in e.value.message


def test_malformed_front_matter(tmp_path):
    program = make_repo(tmp_path / "r")
    program.write_text("---\nname: [unclosed\n---\nbody\n")
    with pytest.raises(InputError) as e:
        load_program(program)
    assert e.value.field == "front matter" and "YAML" in e.value.message


def test_unknown_knob_override(tmp_path, existing, capsys):
    program = make_repo(tmp_path / "r", knobs="{WIDTH: 3}")
    code, err = _cli(["campaign", "--program", str(program), "--org", str(ROLES / "solo"),
                      "--tag", "new"], capsys)
    assert code == 2 and "knobs.WIDTH" in err and "no such knob" in err
    assert _digest("old") == existing[1]
    assert not c.campaign_dir("new").exists()  # nothing left behind: the tag is reusable


@pytest.mark.parametrize("front, field, words", [
    ({"fixed_knobs": "[WIDTH]"}, "fixed_knobs", "WIDTH: no such knob"),
    ({"knob_ranges": "{LR: [0.1, 0.01]}"}, "knob_ranges", "is empty"),
    ({"knob_ranges": "{depth: [1, 8]}"}, "knob_ranges", "UPPER_CASE"),
    ({"knob_moves": "{WIDTH: [x2]}"}, "knob_moves", "WIDTH: no such knob"),
    ({"knob_moves": "{LR: [x3]}"}, "knob_moves", "unknown move 'x3'"),
    ({"knob_moves": "{LR: []}"}, "knob_moves", "no moves"),
    ({"knob_moves": "{USE_GATE: [x2]}"}, "knob_moves.USE_GATE", "x2 does not apply to bool knob"),
    ({"knob_constraints": '["DEPTH *"]'}, "knob_constraints", "not an expression"),
    ({"knob_constraints": '["open(DEPTH) == 1"]'}, "knob_constraints", "only min, max, abs may be called"),
    ({"knob_constraints": '["WIDTH > 2"]'}, "knob_constraints", "reads WIDTH, not a knob of target/train.py"),
    ({"knob_constraints": '["DEPTH > 4"]'}, "knob_constraints", "the starting knobs break it: knob_constraints "
                                                                 "'DEPTH > 4' fails at DEPTH=4"),
    ({"knob_constraints": '["DEPTH < 5"]', "knobs": "{DEPTH: 5}"}, "knob_constraints", "DEPTH < 5' fails at DEPTH=5"),
])
def test_bad_search_space(tmp_path, existing, capsys, front, field, words):
    program = make_repo(tmp_path / "r", **front)
    code, err = _cli(["campaign", "--program", str(program), "--org", str(ROLES / "tiered"),
                      "--tag", "new"], capsys)
    assert code == 2 and str(program) in err and field in err and words in err
    assert _digest("old") == existing[1] and not c.campaign_dir("new").exists()


def test_metric_never_printed(tmp_path, existing, capsys):
    program = make_repo(tmp_path / "r", metric="val_loss")
    code, err = _cli(["campaign", "--program", str(program), "--org", str(ROLES / "tiered"),
                      "--tag", "new"], capsys)
    assert code == 2 and f"{program}: metric: the baseline run never printed 'val_loss'" in err
    assert _digest("old") == existing[1] and not c.campaign_dir("new").exists()


def test_baseline_crash_names_run(tmp_path, capsys):
    program = make_repo(tmp_path / "r", knobs="{DEPTH: 2}")  # the tiny target fails below 3
    code, err = _cli(["campaign", "--program", str(program), "--org", str(ROLES / "tiered")], capsys)
    assert code == 2 and ": run: the unmodified target failed (exit 1" in err


def _bad_org(tmp_path: Path, edit) -> Path:
    org = tmp_path / "org"
    shutil.copytree(ROLES / "tiered", org)
    edit(org)
    return org


@pytest.mark.parametrize("edit, file, field, words", [
    (lambda o: (o / "org.md").write_text("---\nname: x\nroles: {proposer: proposer.md}\nspeed: 3\n---\n"),
     "org.md", "speed", "unknown field"),
    (lambda o: (o / "org.md").write_text("---\nname: x\nroles: {wizard: proposer.md}\n---\n"),
     "org.md", "roles", ""),
    (lambda o: (o / "director.md").write_text("---\nmodel: local/gemma3-270m\nvibes: 1\n---\nhi\n"),
     "director.md", "vibes", "unknown field"),
    (lambda o: (o / "proposer.md").write_text("---\nmodel: local/gemma3-270m\n---\n{{ knobz }}\n"),
     "proposer.md", "body", "missing template variable 'knobz'"),
    (lambda o: (o / "reviewer.md").write_text("---\nmodel: [oops\n---\nx\n"),
     "reviewer.md", "front matter", "YAML"),
    (lambda o: (o / "compactor.md").unlink(), "org.md", "roles.compactor", "not found"),
])
def test_bad_org_on_resume_leaves_records(tmp_path, existing, capsys, edit, file, field, words):
    """Resume re-reads the org: a broken file stops it before anything is touched."""
    org = _bad_org(tmp_path, edit)
    record = c.load_record("old")
    patched = record.model_copy(update={"org": str(org), "max_experiments": 3})
    (c.campaign_dir("old") / "campaign.json").write_text(patched.model_dump_json(indent=2))
    before = _digest("old")
    code, err = _cli(["resume", "old"], capsys)
    assert code == 2, err
    assert f"{org / file}: {field}" in err and words in err
    assert _digest("old") == before


def test_unknown_tag_and_taken_tag(tmp_path, existing, capsys):
    code, err = _cli(["resume", "nope"], capsys)
    assert code == 2 and "tag: no campaign named 'nope'" in err
    code, err = _cli(["campaign", "--program", str(existing[0]), "--org", str(ROLES / "tiered"),
                      "--tag", "old"], capsys)
    assert code == 2 and "already exists" in err
    assert _digest("old") == existing[1]


def test_status_and_log(existing, capsys):
    assert main(["status", "old"]) is None
    out = capsys.readouterr().out
    assert "records agree" in out and "old" in out
    main(["log", "old"])
    assert "val_bpb\tmemory_gb\tstatus" in capsys.readouterr().out
    main(["log", "old", "--events", "-n", "3"])
    assert '"campaign": "old"' in capsys.readouterr().out


def test_a_changed_fan_out_on_resume_exits_2_and_leaves_records(tmp_path, existing, capsys):
    """A round in progress depends on its size: resume refuses a program whose fan_out changed."""
    program, before = existing
    program.write_text(program.read_text().replace("---\nTune", "fan_out: 2\n---\nTune", 1))
    code, err = _cli(["resume", "old", "--max-experiments", "3"], capsys)
    assert code == 2, err
    assert f"{program}: fan_out" in err and "changed since the campaign started (1 -> 2)" in err
    assert _digest("old") == before
