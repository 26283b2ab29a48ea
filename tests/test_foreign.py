"""Knob styles for foreign training repos: a nanoGPT-shaped target (a config file of lower-case
assignments, `--key=value` overrides, a git-ignored data file, a regex on its "val loss" line),
driven in knob mode through real campaigns; and the setup log kept when setup fails."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from org import campaign as c
from org.errors import InputError
from org.ledger import Ledger
from org.program import load_program
from org.proposal import apply_knob_move, override_args, parse_knobs
from org.settings import home_dir
from tests.scripted import ScriptedClient
from tests.tiny import APPROVE, DIRECTIVE, knob

ROLES = Path(__file__).resolve().parents[1] / "roles"

CONFIG = """\
# train a tiny character-level model (nanoGPT-style config)
out_dir = 'out-tiny'
eval_interval = 250 # keep frequent because we'll overfit
learning_rate = 1e-3 # with baby networks can afford to go a bit higher
n_layer = 6
dropout = 0.2
always_save_checkpoint = False
"""

TRAIN = """\
import math
import sys

# nanoGPT's configurator: the config file, then --key=value overrides
exec(open('config/train_tiny.py').read())
for arg in sys.argv[1:]:
    key, _, value = arg[2:].partition('=')
    globals()[key] = type(globals()[key])(value) if not isinstance(globals()[key], bool) else value == 'True'
    print(f"Overriding: {key} = {value}")
text = open('data/input.txt').read()  # git-ignored: the clean worktree has none of its own
loss = 1.5 + 0.1 * (math.log10(learning_rate) + 2.5) ** 2 + 0.01 * abs(n_layer - 6) + len(text) * 0.0
print(f"step 250: train loss {loss - 0.1:.4f}, val loss {loss:.4f}")
"""


def make_foreign(root: Path, style: str = "assignments", **extra: str) -> Path:
    (root / "config").mkdir(parents=True)
    (root / "data").mkdir()
    (root / "programs").mkdir()
    (root / "config" / "train_tiny.py").write_text(CONFIG)
    (root / "train.py").write_text(TRAIN)
    (root / "data" / "input.txt").write_text("First Citizen:\nBefore we proceed any further, hear me speak.\n")
    (root / ".gitignore").write_text("data/input.txt\n")
    front = {
        "name": "foreign", "target": ".", "editable": "[config/train_tiny.py]", "protected": "[train.py]",
        "knob_file": "config/train_tiny.py", "knob_style": style, "data_files": "[data/input.txt]",
        "run": "python train.py" + ("" if style == "overrides" else ""), "metric": "val_loss",
        "parse": "{kind: regex, regex: 'val loss ([0-9.]+)'}", "time_budget_s": "1", "run_timeout_s": "30",
        "smoke_timeout_s": "null", "noise": "{seed_knob: null, baseline_runs: 1, max_replicates: 0}",
        "fixed_knobs": "[eval_interval, always_save_checkpoint]",
    }  # fmt: skip
    front.update(extra)
    body = "\n".join(f"{k}: {v}" for k, v in front.items() if v is not None)
    program = root / "programs" / "foreign.md"
    program.write_text(f"---\n{body}\n---\nTune the learning rate.\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=root, check=True)
    subprocess.run([*git, "add", "-A"], cwd=root, check=True)
    subprocess.run([*git, "commit", "-qm", "foreign target"], cwd=root, check=True)
    return program


def test_assignment_knobs_are_parsed_and_moved_byte_exactly():
    knobs = {k.name: k for k in parse_knobs(CONFIG, "config/train_tiny.py", "assignments")}
    assert set(knobs) == {"out_dir", "eval_interval", "learning_rate", "n_layer", "dropout", "always_save_checkpoint"}
    assert parse_knobs(CONFIG, "c.py") == []  # the constants style finds none in a config file
    new, description = apply_knob_move(CONFIG, "learning_rate", "x2", "c.py", "assignments")
    assert description == "learning_rate x2: 1e-3 -> 0.002"
    assert new == CONFIG.replace("learning_rate = 1e-3 #", "learning_rate = 0.002 #")
    assert "--learning_rate=0.001" in override_args(CONFIG, "c.py")


def test_a_config_file_target_runs_in_knob_mode_with_its_ignored_data(tmp_path):
    program = make_foreign(tmp_path / "repo")
    client = ScriptedClient(script={"proposer": [knob("learning_rate", "x2"), knob("n_layer", "+1")]},
                            default={"director": DIRECTIVE, "reviewer": APPROVE})  # fmt: skip
    state = c.start(program, ROLES / "tiered", tag="nano", max_experiments=2, models=client)
    assert state["stopped"] == "reached max_experiments=2"
    rows = Ledger(c.campaign_dir("nano") / "ledger.db").experiments()
    assert [r["status"] for r in rows] == ["keep", "keep", "discard"]  # the data file was readable
    assert rows[1]["description"] == "learning_rate x2: 1e-3 -> 0.002"
    assert rows[1]["metric"] < min(rows[0]["metric"], rows[2]["metric"])
    wt = c.campaign_dir("nano") / "worktree"
    assert (wt / "data" / "input.txt").is_symlink()
    assert subprocess.run(["git", "status", "--porcelain"], cwd=wt, capture_output=True, text=True).stdout == ""


def test_override_knobs_reach_the_run_command(tmp_path):
    program = make_foreign(tmp_path / "repo", style="overrides")
    client = ScriptedClient(script={"proposer": [knob("learning_rate", "x2")]},
                            default={"director": DIRECTIVE, "reviewer": APPROVE})  # fmt: skip
    c.start(program, ROLES / "tiered", tag="over", max_experiments=1, models=client)
    rows = Ledger(c.campaign_dir("over") / "ledger.db").experiments()
    assert [r["status"] for r in rows] == ["keep", "keep"]
    log = Path(rows[1]["log"]).read_text()
    assert "Overriding: learning_rate = 0.002" in log and "Overriding: n_layer = 6" in log


@pytest.mark.parametrize(
    ("extra", "field", "says"),
    [
        ({"knob_style": "constants"}, "fixed_knobs", "UPPER_CASE"),
        ({"data_files": "[../secrets.txt]"}, "data_files", "inside the repo"),
        ({"data_files": "[data/missing.bin]"}, "data_files", "does not exist"),
        ({"knob_ranges": "{learning_rat: [1e-4, 1e-2]}"}, "knob_ranges", "learning_rat"),
    ],
)
def test_bad_knob_contracts_name_the_field(tmp_path, extra, field, says):
    program = make_foreign(tmp_path / "repo", **extra)
    with pytest.raises(InputError) as e:
        c.validate_inputs(program, ROLES / "tiered")
    assert e.value.field == field and says in e.value.message and Path(e.value.path) == program.resolve()


def test_a_failed_setup_keeps_its_log_where_the_error_says(tmp_path):
    program = make_foreign(tmp_path / "repo", setup="\"python -c 'print(\\\"downloading input.txt\\\"); exit(3)'\"")
    load_program(program)
    with pytest.raises(InputError) as e:
        c.start(program, ROLES / "tiered", tag="nosetup", max_experiments=1, models=ScriptedClient())
    assert e.value.field == "setup" and not c.campaign_dir("nosetup").exists()
    kept = home_dir() / "failed" / "nosetup.setup.log"
    assert str(kept) in e.value.message and "downloading input.txt" in kept.read_text()
