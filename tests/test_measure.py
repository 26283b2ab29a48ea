"""Measurement (org/measure.py): training and scoring in separate sandboxes, the metric from the
harness's evaluation only, compute the budget does not count bounded by the OS, and the data a
campaign reads hashed and checked before every run.

The tiny target trains by writing a JSON "model" (its metric) where the harness says
($NIGHTLAB_CHECKPOINT); its evaluate script is the harness here: it reads the model and a val
file only the evaluation sandbox can see.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from org import bwrap
from org import campaign as c
from org.cli import main
from org.errors import InputError
from org.ledger import Ledger
from org.measure import Caps, measure
from org.program import load_program
from org.workspace import git
from tests.scripted import ScriptedClient
from tests.tiny import APPROVE, DIRECTIVE, knob, make_repo

ROLES = Path(__file__).resolve().parents[1] / "roles"
needs_bwrap = pytest.mark.skipif(bwrap.unavailable() is not None, reason=str(bwrap.unavailable()))

EVALUATE = '''\
"""Fixed harness: the run's metric, from its saved model and the val file."""
import json, os
model = json.load(open(os.environ["NIGHTLAB_CHECKPOINTS"]))
offset = float(open(os.path.join(os.environ["TINY_VAL"], "val.txt")).read())
print("---")
print(f"val_bpb: {model['val'] + offset:.6f}")
'''
# A training run that tries what a proposer's code would: read val, then forge the summary.
FORGER = '''
import os, sys
try:
    open(os.path.join(os.environ["TINY_VAL"], "val.txt")).read()
    print("val: READABLE")
except OSError:
    print("val: unreadable")
print("---")
print("val_bpb: 0.000100")
'''


def _program(tmp_path: Path, **front: str):
    val = tmp_path / "cache" / "val"
    val.mkdir(parents=True)
    (val / "val.txt").write_text("0.5")
    fields = {"evaluate": "python -m target.evaluate", "env": "{TINY_VAL: '%s'}" % val,
              "sandbox": "{reads: {evaluate: ['%s']}}" % val, **front}  # fmt: skip
    program = make_repo(tmp_path / "repo", **fields)
    repo = program.parents[1]
    (repo / "target" / "evaluate.py").write_text(EVALUATE)
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "the harness's evaluation")
    return load_program(program), repo


@needs_bwrap
def test_the_metric_is_the_evaluations_and_a_forged_block_changes_nothing(tmp_path):
    prog, repo = _program(tmp_path)
    train = repo / "target" / "train.py"
    train.write_text(train.read_text() + FORGER)
    res = measure(prog, repo, {}, tmp_path / "run.log", tmp_path / "out", sandboxed=True, timeout_s=60)
    assert res.returncode == 0 and not res.violations, res.tail
    assert float(res.summary["val_bpb"]) == pytest.approx(1.075 + 0.5)  # the model's 1.075, scored with val
    assert list(res.summary) == ["val_bpb"]  # the run's last block was the forger's: only its metric, dropped
    log = (tmp_path / "run.log").read_text()
    assert "val: unreadable" in log and "=== nightlab: evaluate" in log
    assert json.loads((tmp_path / "out" / "model.pt").read_text())["val"] == pytest.approx(1.075)


@needs_bwrap
def test_a_run_that_saves_no_model_has_no_metric_whatever_it_printed(tmp_path):
    prog, repo = _program(tmp_path)
    train = repo / "target" / "train.py"
    train.write_text(train.read_text().replace('if os.environ.get("NIGHTLAB_CHECKPOINT"):', "if False:") + FORGER)
    res = measure(prog, repo, {}, tmp_path / "run.log", tmp_path / "out", sandboxed=True, timeout_s=60)
    assert res.returncode == 1 and "val_bpb" not in res.summary
    assert "saved no model" in res.tail


@needs_bwrap
def test_an_evaluation_that_rejects_the_model_rejects_the_run(tmp_path):
    prog, repo = _program(tmp_path)
    (repo / "target" / "evaluate.py").write_text('print("---")\nprint("rejected: causality check failed")\n')
    res = measure(prog, repo, {}, tmp_path / "run.log", tmp_path / "out", sandboxed=True, timeout_s=60)
    assert res.violations == ["the evaluation rejected the model: causality check failed"]


@needs_bwrap
def test_what_the_evaluation_printed_never_reaches_the_proposers_feedback(tmp_path):
    """Code that ran where val is readable (an in-process scorer, a model server's log) can print
    val's text. The run log keeps it for people; the tail that feeds prompts does not."""
    prog, repo = _program(tmp_path)
    (repo / "target" / "evaluate.py").write_text(
        'import os\nprint("VAL TEXT:", open(os.path.join(os.environ["TINY_VAL"], "val.txt")).read() * 3)\n'
        'raise SystemExit(3)\n')
    res = measure(prog, repo, {}, tmp_path / "run.log", tmp_path / "out", sandboxed=True, timeout_s=60)
    assert res.returncode == 3 and res.summary == {}
    assert "VAL TEXT" not in res.tail and "0.50.50.5" not in res.tail
    assert "the evaluation (python -m target.evaluate) exited 3" in res.tail
    assert "VAL TEXT: 0.50.50.5" in (tmp_path / "run.log").read_text()


BURN = '''
import time
t = time.process_time()
while time.process_time() - t < 1.5:
    pass
'''


@pytest.mark.parametrize("sandboxed", [True, False])
def test_compute_outside_the_budget_is_bounded_by_the_os(tmp_path, sandboxed):
    if sandboxed and bwrap.unavailable():
        pytest.skip(bwrap.unavailable())
    prog, repo = _program(tmp_path)
    train = repo / "target" / "train.py"
    train.write_text(BURN + train.read_text())
    caps = Caps(cpu_s=0.5, why="2x the baseline's 0.25 CPU-s")
    res = measure(prog, repo, {}, tmp_path / "run.log", tmp_path / "out", sandboxed=sandboxed, timeout_s=60, caps=caps)
    assert res.cpu_seconds is not None and res.cpu_seconds >= 1.5  # the kernel's count: exact
    assert res.violations == [f"untimed compute: used {res.cpu_seconds:.1f} CPU-s, over 0.5 (2x the baseline's 0.25 CPU-s)"]
    # the wall clock too: a sleeping run is cut at the cap and named for it, not for the timeout
    slow = make_repo(tmp_path / "slow", sleep=5, evaluate="python -m target.evaluate")
    (slow.parents[1] / "target" / "evaluate.py").write_text(EVALUATE)
    res = measure(load_program(slow), slow.parents[1], {}, tmp_path / "slow.log", tmp_path / "o2", sandboxed=sandboxed,
                  timeout_s=60, caps=Caps(wall_s=1.0, why="1.5x its 0.7 s"))  # fmt: skip
    assert res.violations == ["untimed compute: ran past 1 s (1.5x its 0.7 s)"] and res.seconds < 5


ORPHAN = '''
import os, time
if os.fork() == 0:  # a child in a session of its own, never waited for: not in the kernel's count
    os.setsid()
    t = time.process_time()
    while time.process_time() - t < 1.5:
        pass
    os._exit(0)
time.sleep(2.5)
'''


@pytest.mark.parametrize("sandboxed", [True, False])
def test_compute_in_an_orphan_is_counted_too(tmp_path, sandboxed):
    """The kernel counts what the run reaps; the watchdog's samples count what it does not."""
    if sandboxed and bwrap.unavailable():
        pytest.skip(bwrap.unavailable())
    prog, repo = _program(tmp_path)
    train = repo / "target" / "train.py"
    train.write_text(ORPHAN + train.read_text())
    caps = Caps(cpu_s=0.5, why="2x the baseline's 0.25 CPU-s")
    res = measure(prog, repo, {}, tmp_path / "run.log", tmp_path / "out", sandboxed=sandboxed, timeout_s=60, caps=caps)
    assert res.cpu_seconds is not None and res.cpu_seconds >= 1.2  # sampled every 0.2 s
    assert res.violations == [f"untimed compute: used {res.cpu_seconds:.1f} CPU-s, over 0.5 (2x the baseline's 0.25 CPU-s)"]


def test_caps_come_from_the_baseline_and_the_programs_slack(tmp_path):
    prog, _ = _program(tmp_path, sandbox="{cpu_slack: 4, wall_slack: 1.5}")
    caps = Caps.from_baseline(prog, cpu=[40.0, 42.0, 41.0], wall=[30.0, 31.0, 29.0])
    assert caps.cpu_s == pytest.approx(168.0) and caps.wall_s == pytest.approx(46.5)
    assert caps.why == "4x the baseline's 42.0 CPU-s and 1.5x its 31.0 s of wall clock"
    assert Caps.from_baseline(prog, cpu=[], wall=[]) == Caps(None, None, "")


def test_a_read_path_that_is_not_absolute_names_the_field(tmp_path):
    program = make_repo(tmp_path / "repo", sandbox="{reads: {run: ['$HOME/data']}}")
    with pytest.raises(InputError, match="only ~ and \\$NIGHTLAB_CACHE are expanded") as err:
        load_program(program)
    assert err.value.field == "sandbox.reads.run"


# ---- the campaign: bubblewrap required for code a model wrote, the data checked every run ----


def _edit_client() -> ScriptedClient:
    edit = {"hypothesis": "doubling the step size reaches a lower loss within the budget",
            "edits": [{"path": "train.py", "search": "LR = 0.01", "replace": "LR = 0.02"}]}  # fmt: skip
    return ScriptedClient(default={"director": DIRECTIVE, "reviewer": APPROVE, "proposer": edit})


def test_edit_mode_without_bubblewrap_refuses_unless_unsandboxed(tmp_path, monkeypatch, capsys):
    program = make_repo(tmp_path / "repo")
    monkeypatch.setattr(bwrap, "unavailable", lambda: f"bubblewrap is not installed: {bwrap.INSTALL_HINT}")
    with pytest.raises(SystemExit) as exit_:
        main(["campaign", "--program", str(program), "--org", str(ROLES / "solo")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert "bubblewrap is not installed" in err and "apt-get install bubblewrap" in err and "--unsandboxed" in err
    assert not c.list_tags()  # nothing was written
    c.start(program, ROLES / "solo", tag="open", max_experiments=1, models=_edit_client(), unsandboxed=True)
    runs = Ledger(c.campaign_dir("open") / "ledger.db").db["runs"].rows
    assert {r["isolation"].split(":")[0].split(" (")[0] for r in runs} <= {"isolated", "not isolated"}
    assert c.load_record("open").unsandboxed is True


def test_knob_mode_without_bubblewrap_runs_and_records_it(tmp_path, monkeypatch):
    program = make_repo(tmp_path / "repo")
    monkeypatch.setattr(bwrap, "unavailable", lambda: "bubblewrap is not installed")
    client = ScriptedClient(default={"director": DIRECTIVE, "reviewer": APPROVE, "proposer": knob("LR", "x2")})
    c.start(program, ROLES / "tiered", tag="knobs", max_experiments=1, models=client)
    runs = list(Ledger(c.campaign_dir("knobs") / "ledger.db").db["runs"].rows)
    assert runs and all(not r["isolation"].startswith("bubblewrap") for r in runs)


@needs_bwrap
def test_every_run_of_a_campaign_is_sandboxed_and_records_it(tmp_path):
    prog, repo = _program(tmp_path)
    c.start(prog.path, ROLES / "solo", tag="boxed", max_experiments=1, models=_edit_client())
    ledger = Ledger(c.campaign_dir("boxed") / "ledger.db")
    runs = list(ledger.db["runs"].rows)
    assert len(runs) == 2 and all(r["isolation"].startswith("bubblewrap: no network") for r in runs)
    assert all(r["cpu_seconds"] and r["cpu_seconds"] > 0 for r in runs)
    assert [e["metric"] for e in ledger.experiments()] == pytest.approx([1.575, 1.554], abs=1e-3)


def test_a_poisoned_data_file_stops_the_campaign_before_the_next_run(tmp_path):
    prog, repo = _program(tmp_path)
    c.start(prog.path, ROLES / "tiered", tag="poison", max_experiments=1,
            models=ScriptedClient(default={"director": DIRECTIVE, "reviewer": APPROVE,
                                           "proposer": knob("LR", "x2")}))  # fmt: skip
    before = Ledger(c.campaign_dir("poison") / "ledger.db").experiments()
    val = tmp_path / "cache" / "val" / "val.txt"
    val.write_text("0.0")  # a run of an unsandboxed campaign, or anyone, changed the data
    client = ScriptedClient(default={"director": DIRECTIVE, "reviewer": APPROVE, "proposer": knob("DEPTH", "x2")})
    with pytest.raises(InputError, match="changed since this campaign's setup hashed the data") as err:
        c.resume("poison", max_experiments=2, models=client)
    assert err.value.path == str(val)
    assert Ledger(c.campaign_dir("poison") / "ledger.db").experiments() == before  # nothing lost


# ---- the real target: the scorer never runs train.py's code ---------------------------------

HOSTILE = '''
import atexit, os, sys
from trainer import prepare as _p
if __name__ != "__main__":  # imported to be scored: try to read val, then forge the metric at exit
    try:
        open(_p.val_dir() / "val.bin", "rb").read(16)
        print("val: READABLE", flush=True)
    except OSError:
        print("val: unreadable", flush=True)
    atexit.register(lambda: print("---\\nval_bpb:          0.100000", flush=True))
    os.write(1, b"---\\nval_bpb: 0.100000\\n")
'''


def _real_target(tmp_path: Path, hostile: bool, **front) -> tuple:
    repo = Path(__file__).resolve().parents[1]
    work = tmp_path / ("hostile" if hostile else "honest")
    shutil.copytree(repo / "trainer", work / "trainer", ignore=shutil.ignore_patterns("__pycache__"))
    if hostile:
        train = work / "trainer" / "train.py"
        train.write_text(train.read_text().replace('\nif __name__ == "__main__":', HOSTILE + '\nif __name__ == "__main__":'))
    program = load_program(repo / "programs" / "quickstart.md")
    spec = program.spec.model_copy(update=front)
    return program.__class__(spec=spec, strategy="", path=program.path, repo=program.repo), work


@pytest.mark.slow
@needs_bwrap
def test_forged_output_from_model_code_reaches_no_metric(prepared_cpu, tmp_path):
    env = {"NIGHTLAB_PRESET": "cpu", "NIGHTLAB_SMOKE": "1", "NIGHTLAB_SMOKE_FLOPS": "2e11"}
    results = {}
    for hostile in (False, True):
        program, work = _real_target(tmp_path, hostile)
        log = tmp_path / f"{hostile}.log"
        res = measure(program, work, env, log, tmp_path / f"out{hostile}", sandboxed=True, timeout_s=300)
        assert res.returncode == 0 and not res.violations, res.tail
        results[hostile] = float(res.summary["val_bpb"])
        if hostile:
            text = log.read_text()
            assert "val: unreadable" in text and "val: READABLE" not in text  # the server reads no data
            assert text.rstrip().endswith("eval_tokens:      " + str(4 * 256))  # the scorer's block ends it
    assert results[True] == results[False] != 0.1  # the same model, the same score: the forgery changed nothing
    # the same code scored in-process (no model server): its exit handler writes the last block
    program, work = _real_target(tmp_path / "inproc", True, model_server=None)
    res = measure(program, work, env, tmp_path / "inproc.log", tmp_path / "out3", sandboxed=True, timeout_s=300)
    assert float(res.summary["val_bpb"]) == 0.1  # why the scorer must not run the model's code


SERVER_BURN = '''
if __name__ != "__main__":  # only where the model is loaded to be scored: compute the budget never sees
    import time as _t
    _x, _s = torch.randn(512, 512), _t.process_time()
    while _t.process_time() - _s < 25:
        _x = torch.tanh(_x @ _x)
'''


@pytest.mark.slow
@needs_bwrap
def test_compute_spent_while_scored_counts_against_the_cap(prepared_cpu, tmp_path):
    env = {"NIGHTLAB_PRESET": "cpu", "NIGHTLAB_SMOKE": "1", "NIGHTLAB_SMOKE_FLOPS": "1e11"}
    program, work = _real_target(tmp_path, False)
    ref = measure(program, work, env, tmp_path / "ref.log", tmp_path / "o1", sandboxed=True, timeout_s=300)
    assert ref.returncode == 0 and ref.cpu_seconds and not ref.violations, ref.tail
    program, work = _real_target(tmp_path / "burn", False)
    train = work / "trainer" / "train.py"
    train.write_text(train.read_text().replace('\nif __name__ == "__main__":', SERVER_BURN + '\nif __name__ == "__main__":'))
    caps = Caps(cpu_s=ref.cpu_seconds + 12, why="the reference's CPU + 12 s")
    res = measure(program, work, env, tmp_path / "burn.log", tmp_path / "o2", sandboxed=True, timeout_s=300, caps=caps)
    assert res.cpu_seconds > ref.cpu_seconds + 20  # the server's 25 CPU-s are the run's
    assert [v for v in res.violations if v.startswith("untimed compute")], (res.cpu_seconds, ref.cpu_seconds)
