"""The held-out test of every keep and the drift check, end to end on the tiny target.

The tiny target saves a JSON "model" where the harness tells it to ($NIGHTLAB_CHECKPOINT) and its
target/heldout.py scores the saved models: the val metric + 0.01, + 0.2 with USE_GATE (a gain on
val that does not generalise). $TINY_DRIFT (the program's env, edited between runs) shifts every run: the machine changed.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from org import campaign as c
from org.cli import cli
from org.errors import InputError
from org.ledger import Ledger
from tests.scripted import ScriptedClient
from tests.tiny import APPROVE, DIRECTIVE, knob, make_repo

ROLES = Path(__file__).resolve().parents[1] / "roles"
TESTED = {"test": "python -m target.heldout", "test_metric": "test_bpb"}
NOISY = {"env": "{TINY_NOISE: '0.004'}",
         "noise": "{seed_env: TINY_SEED, baseline_runs: 3, max_replicates: 3, confidence: 0.95}"}


def test_every_keep_is_scored_on_held_out_data_and_a_wrong_sign_is_flagged(tmp_path):
    program = make_repo(tmp_path / "repo", sleep=0.01, **TESTED, **NOISY)
    client = ScriptedClient(
        script={"proposer": [knob("LR", "x2"), knob("DEPTH", "x2"), knob("USE_GATE", "toggle")]},
        default={"director": DIRECTIVE, "reviewer": APPROVE},
    )
    c.start(program, ROLES / "tiered", tag="held", max_experiments=3, models=client)
    directory = c.campaign_dir("held")
    ledger = Ledger(directory / "ledger.db")
    rows = ledger.experiments()
    assert [r["status"] for r in rows] == ["keep", "keep", "discard", "keep"]
    for r in rows:  # the test score is the mean over the keep's runs' saved models
        if r["status"] == "keep":
            assert r["test_metric"] == pytest.approx(r["metric"] + 0.01 + (0.2 if r["n"] == 3 else 0.0), abs=1e-5)
        else:
            assert r["test_metric"] is None and r["test_delta"] is None
    assert rows[0]["test_delta"] is None  # the baseline has no parent
    assert rows[1]["test_delta"] == pytest.approx(rows[1]["delta"], abs=1e-5) and rows[1]["test_delta"] < 0
    assert rows[3]["delta"] < 0 < rows[3]["test_delta"]  # better on val, worse on held-out data
    log = (directory / "runs" / "0003.test.log").read_text()
    assert f"test_models: {rows[3]['runs']}" in log
    # only the best's saved models are kept
    assert sorted(p.name for p in (directory / "runs").glob("*.pt")) == sorted(
        "0003.pt" if r == 0 else f"0003.r{r}.pt" for r in range(rows[3]["runs"]))
    header = (directory / "results.tsv").read_text().splitlines()[0].split("\t")
    assert header[:2] == ["commit", "val_bpb"] and header[-2:] == ["test_val_bpb", "test_delta"]
    assert c.agreement_problems("held") == []

    s = c.summary("held")
    assert s["best_test"] == pytest.approx(rows[3]["test_metric"])
    assert [f["n"] for f in s["test_flags"]] == [3]
    out = CliRunner().invoke(cli, ["status", "held"])
    assert out.exit_code == 0, out.output
    assert "FLAG held: keep 3 (USE_GATE" in out.output and "the wrong way" in out.output


def test_a_test_command_that_fails_on_the_baseline_names_the_field(tmp_path):
    program = make_repo(tmp_path / "repo", sleep=0.01, test="python -m target.no_such_module")
    client = ScriptedClient(default={"director": DIRECTIVE, "reviewer": APPROVE, "proposer": knob("LR", "x2")})
    with pytest.raises(InputError, match="on the baseline: the test command gave no 'test_val_bpb' \\(exit 1") as err:
        c.start(program, ROLES / "tiered", tag="badtest", max_experiments=1, models=client)
    assert err.value.field == "test" and err.value.path == str(program)


def test_drift_is_flagged_and_later_candidates_are_judged_by_fresh_runs(tmp_path):
    noisy = {"env": "{TINY_NOISE: '0.004', TINY_DRIFT: '0'}",
             "noise": "{seed_env: TINY_SEED, baseline_runs: 3, max_replicates: 3, rebaseline_every: 2}"}
    program = make_repo(tmp_path / "repo", sleep=0.01, **noisy)
    moves = [knob("LR", "x2"), knob("DEPTH", "x2"), knob("SLEEP_S", "x2"), knob("SLEEP_S", "x0.5"),
             knob("USE_GATE", "toggle")]
    client = ScriptedClient(script={"proposer": moves}, default={"director": DIRECTIVE, "reviewer": APPROVE})
    c.start(program, ROLES / "tiered", tag="drift", max_experiments=3, models=client)
    ledger = Ledger(c.campaign_dir("drift") / "ledger.db")
    (check,) = ledger.drift_checks()  # after experiment 2, before 3: the best (1) re-ran, no drift
    assert check["exp"] == 1 and check["after"] == 2 and not check["flagged"]
    assert [r["kind"] for r in ledger.runs(1)][-1] == "rebaseline"
    before = len(ledger.runs(1))
    ledger.close()

    program.write_text(program.read_text().replace("TINY_DRIFT: '0'", "TINY_DRIFT: '0.05'"))
    # the machine got slower: every run now scores 0.05 worse
    # experiment 4 runs on the drifted machine, then the check after it finds the drift; the
    # campaign stops after experiment 5, so nothing is checked after it (it would judge nothing)
    c.resume("drift", max_experiments=5, models=client)
    ledger = Ledger(c.campaign_dir("drift") / "ledger.db")
    checks = ledger.drift_checks()
    assert [(d["exp"], d["after"], d["flagged"]) for d in checks] == [(1, 2, 0), (1, 4, 1)]
    assert checks[1]["metric"] - checks[1]["reference"] > 0.04
    fresh = ledger.runs(1)
    assert len(fresh) == 3 and all(r["kind"] == "rebaseline" for r in fresh)  # re-measured: baseline_runs
    assert len(ledger.runs(1, current=False)) == before + 1 + 2
    old_mean = sum(r["metric"] for r in ledger.runs(1, current=False)[:before]) / before
    # USE_GATE is 0.05 better on val: on the drifted machine it scores what the stale record of
    # the best did, so only a comparison with the fresh runs can keep it
    row = ledger.experiment(5)
    assert row["status"] == "keep" and row["delta"] == pytest.approx(-0.05, abs=0.01)
    assert abs(row["metric"] - old_mean) < 0.01
    assert ledger.experiment(4)["status"] == "discard"
    s = c.summary("drift")
    assert [d["after"] for d in s["drift_flags"]] == [4]
    out = CliRunner().invoke(cli, ["status", "drift"])
    assert "FLAG drift: drift after experiment 4" in out.output and "1/2" in out.output
    assert c.agreement_problems("drift") == []


def test_a_keep_whose_runs_print_a_better_number_than_their_models_score_is_rejected(tmp_path):
    """Edit mode, adversarial: a real improvement plus a forged printout (no rule objects: the
    line names no metric or summary key). The harness re-scores the saved models: rejected."""
    program = make_repo(tmp_path / "repo", sleep=0.01, **TESTED, **NOISY)
    forged = {"hypothesis": "higher lr trains faster", "edits": [
        {"path": "train.py", "search": "LR = 0.01", "replace": "LR = 0.02"},
        {"path": "train.py", "search": 'print("step 1 loss 3.2")', "replace": 'metric -= 0.1\nprint("step 1 loss 3.2")'}]}
    honest = {"hypothesis": "doubling the step size reaches a lower loss within the budget", "edits": [
        {"path": "train.py", "search": "LR = 0.01", "replace": "LR = 0.02"}]}
    client = ScriptedClient(script={"proposer": [forged, honest]})
    c.start(program, ROLES / "solo", tag="forged", max_experiments=2, models=client)
    ledger = Ledger(c.campaign_dir("forged") / "ledger.db")
    rows = ledger.experiments()
    assert [r["status"] for r in rows] == ["keep", "rejected", "keep"]
    assert rows[1]["metric"] < rows[2]["metric"] - 0.09  # what the forger printed
    events = (c.campaign_dir("forged") / "events.jsonl").read_text()
    assert "forged metric: model 1's run printed val_bpb" in events
    assert c.summary("forged")["best"] == pytest.approx(rows[2]["metric"])
    assert c.agreement_problems("forged") == []


def test_a_crashed_drift_check_is_recorded_and_changes_nothing(tmp_path):
    noisy = {"env": "{TINY_NOISE: '0.004', TINY_DRIFT: '0'}",
             "noise": "{seed_env: TINY_SEED, baseline_runs: 3, max_replicates: 3, rebaseline_every: 1}",
             "smoke_timeout_s": "null"}  # the candidate's own run crashes, not a smoke run first
    program = make_repo(tmp_path / "repo", sleep=0.01, **noisy)
    client = ScriptedClient(script={"proposer": [knob("DEPTH", "x2"), knob("SLEEP_S", "x2")]},
                            default={"director": DIRECTIVE, "reviewer": APPROVE})
    c.start(program, ROLES / "tiered", tag="crashcheck", max_experiments=1, models=client)
    # every run now crashes: the check's re-run of the best too
    program.write_text(program.read_text().replace("TINY_DRIFT: '0'", "TINY_DRIFT: 'not a number'"))
    c.resume("crashcheck", max_experiments=2, models=client)
    ledger = Ledger(c.campaign_dir("crashcheck") / "ledger.db")
    (check,) = ledger.drift_checks()
    assert check["metric"] is None and not check["flagged"]
    assert len(ledger.runs(0)) == 4 and all(not r["stale"] for r in ledger.runs(0, current=False))
    s = c.summary("crashcheck")
    assert s["drift_failed"] == [1] and s["drift_flags"] == []
    assert ledger.experiment(2)["status"] == "crash"
    out = CliRunner().invoke(cli, ["status", "crashcheck"])
    assert out.exit_code == 0, out.output
    assert "the drift check after experiment 1 failed" in out.output


E2E_PROGRAM = """---
name: e2e
target: trainer/
editable: [train.py]
protected: [prepare.py, corpus.py, scoring.py, heldout.py, remote.py, serve.py]
run: python -m trainer.train
env: {NIGHTLAB_PRESET: cpu, NIGHTLAB_SMOKE: "1", NIGHTLAB_SMOKE_FLOPS: "3e11"}
metric: val_bpb
time_budget_s: 30
run_timeout_s: 300
smoke_timeout_s: null
evaluate: python -m trainer.heldout --split val
model_server: python -m trainer.serve
test: python -m trainer.heldout
test_metric: test_bpb
sandbox:
  reads:
    run: [$NIGHTLAB_CACHE/data]
    evaluate: [$NIGHTLAB_CACHE/data, $NIGHTLAB_CACHE/val]
    test: [$NIGHTLAB_CACHE/data, $NIGHTLAB_CACHE/val, $NIGHTLAB_CACHE/heldout]
knobs: {UNEMBEDDING_LR: 0.00004}
noise: {seed_knob: SEED, baseline_runs: 3, max_replicates: 3}
---
The lm_head learning rate starts 100 times too small.
"""


@pytest.mark.slow
def test_cpu_preset_end_to_end_a_real_fix_is_kept_with_its_test_score_and_a_noop_is_discarded(prepared_cpu, tmp_path):
    """The real trainer on the cpu preset with a tiny FLOP budget (5 steps, so the runs repeat
    exactly per seed): a replicated baseline that starts 100x too low on UNEMBEDDING_LR, a no-op
    (EVAL_BATCH_SIZE: the same rows are scored) discarded, the fix kept on three runs and scored
    on the held-out test split by the harness from the models the runs saved."""
    import shutil
    import subprocess

    repo = tmp_path / "repo"
    (repo / "trainer").mkdir(parents=True)
    (repo / "programs").mkdir()
    for name in ("__init__.py", "prepare.py", "corpus.py", "scoring.py", "heldout.py", "remote.py", "serve.py", "train.py"):
        shutil.copy(ROLES.parent / "trainer" / name, repo / "trainer" / name)
    (repo / "programs" / "e2e.md").write_text(E2E_PROGRAM)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=repo, check=True)
    subprocess.run([*git, "add", "-A"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "trainer"], cwd=repo, check=True)

    noop = {"hypothesis": "a smaller eval batch", "edits": [
        {"path": "train.py", "search": "EVAL_BATCH_SIZE = 32", "replace": "EVAL_BATCH_SIZE = 16"}]}

    def fix(_schema, messages):
        line = next(l for m in messages for l in m["content"].splitlines() if l.startswith("UNEMBEDDING_LR = "))
        return {"hypothesis": "the lm_head learning rate is 100x too small", "edits": [
            {"path": "train.py", "search": line, "replace": "UNEMBEDDING_LR = 0.004  # restored"}]}

    client = ScriptedClient(script={"proposer": [noop, fix]})
    c.start(repo / "programs" / "e2e.md", ROLES / "solo", tag="e2e", max_experiments=2, models=client)
    ledger = Ledger(c.campaign_dir("e2e") / "ledger.db")
    rows = ledger.experiments()
    assert [r["status"] for r in rows] == ["keep", "discard", "keep"], [(r["status"], r["metric"]) for r in rows]
    # the no-op (the scorer's batch is its own: the same model, the same score) is a tie: the test
    # cannot confirm it and it is discarded as inconclusive, after a replicate or more
    seen = [{k: r[k] for k in ("status", "runs", "metric", "delta", "confidence", "inconclusive", "test_metric",
                               "test_delta")} for r in rows]  # fmt: skip
    assert rows[0]["runs"] == 3 and 2 <= rows[1]["runs"] <= 4 and rows[1]["inconclusive"] == 1, seen
    assert abs(rows[1]["delta"]) < 1e-3, seen
    assert rows[2]["runs"] >= 3 and rows[2]["delta"] < -0.3 and rows[2]["confidence"] >= 0.95, seen
    for r in (rows[0], rows[2]):  # the harness's test score beside each keep
        assert r["test_metric"] is not None and 0.5 < r["test_metric"] < 8.0 and r["test_metric"] != r["metric"]
    assert rows[2]["test_delta"] < -0.3, seen  # the fix generalises
    assert [p.name for p in sorted((c.campaign_dir("e2e") / "runs").glob("*.pt"))] == [
        "0002.pt", *[f"0002.r{i}.pt" for i in range(1, rows[2]["runs"])]]
    assert c.agreement_problems("e2e") == []


def _judged(tmp_path, summary: dict[str, str], reported: list[float], returncode: int = 0, violations=()):
    from org.program import load_program
    from org.sandbox import SandboxResult
    from org.verdict import judge_test

    made = tmp_path / "repo" / "programs" / "tiny.md"
    program = load_program(made if made.exists() else make_repo(tmp_path / "repo", **TESTED))
    res = SandboxResult(returncode=returncode, timed_out=False, seconds=1.0, summary=summary, tail="",
                        log_path=tmp_path / "t.log", violations=list(violations))  # fmt: skip
    return judge_test(program, reported, res)


def test_judge_test_holds_each_model_against_its_own_run(tmp_path):
    ok = {"test_bpb": "1.010", "val_bpb": "1.0002", "val_bpb_1": "1.0000", "val_bpb_2": "1.0004"}
    t = _judged(tmp_path, ok, [1.0, 1.0004])
    assert t.metric == 1.01 and not t.rejected and not t.reason
    # one run of three forged by 0.0015: the mean moves by 0.0005, the run's own model gives it away
    forged = {"test_bpb": "1.010", "val_bpb": "1.0005", "val_bpb_1": "1.0", "val_bpb_2": "1.0015", "val_bpb_3": "1.0"}
    t = _judged(tmp_path, forged, [1.0, 1.0, 1.0])
    assert t.rejected.startswith("forged metric: model 2's run printed val_bpb 1.000000")


def test_judge_test_refusals_violations_and_missing_scores(tmp_path):
    t = _judged(tmp_path, {"rejected": "causality check failed on 0003.pt"}, [1.0])
    assert t.metric is None and t.rejected == "the harness refused the saved models: causality check failed on 0003.pt"
    t = _judged(tmp_path, {"test_bpb": "0.5"}, [1.0], violations=["wrote outside the run"])
    assert t.metric is None and "the test run broke the sandbox: wrote outside the run" in t.rejected
    t = _judged(tmp_path, {}, [1.0], returncode=1)
    assert t.metric is None and not t.rejected and "the test command gave no 'test_bpb' (exit 1" in t.reason
    t = _judged(tmp_path, {}, [])
    assert t.reason.startswith("no saved models")
    t = _judged(tmp_path, {"test_bpb": "1.2", "val_bpb": "1.1"}, [1.0, 1.0])  # only a mean re-scored
    assert t.rejected.startswith("forged metric: the runs (on average) printed val_bpb 1.000000")


def test_the_locked_evaluator_fails_closed(tmp_path):
    """With a model server, a keep its test cannot verify is rejected: a NaN test score, a crash,
    a model left unscored are all things a model's code can choose."""
    make_repo(tmp_path / "repo", **TESTED, model_server="python -m target.serve")
    t = _judged(tmp_path, {"test_bpb": "nan", "val_bpb": "2.8", "val_bpb_1": "2.8"}, [2.8])
    assert t.metric is None and t.rejected.startswith("the keep's test could not verify it: ")
    t = _judged(tmp_path, {}, [1.0], returncode=1)
    assert t.rejected.startswith("the keep's test could not verify it: the test command gave no 'test_bpb' (exit 1")
    t = _judged(tmp_path, {"test_bpb": "1.01", "val_bpb": "1.0", "val_bpb_1": "1.0"}, [1.0, 1.0])
    assert t.rejected == "the keep's test could not verify it: no finite re-score of model 2"
    t = _judged(tmp_path, {"test_bpb": "1.01", "val_bpb": "1.0", "val_bpb_1": "1.0", "val_bpb_2": "1.0"}, [1.0, 1.0])
    assert t.metric == 1.01 and not t.rejected
