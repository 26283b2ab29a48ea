"""kill -9 a real campaign process at different points, resume, and check nothing was lost or
counted twice: git history, results.tsv and the SQLite ledger must agree."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from memory import NoteStore
from org import campaign as c
from org.ledger import Ledger
from org.settings import home_dir
from tests.tiny import make_repo

ROOT = Path(__file__).resolve().parents[1]
MAX = 6


def _spawn(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tests.campaign_proc", *args], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, **(env or {})})  # fmt: skip


def _events(tag: str) -> list[dict]:
    path = c.campaign_dir(tag) / "events.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by the kill
            pass
    return out


def _count(tag: str, prefix: str) -> int:
    return len([e for e in _events(tag) if e["event"].startswith(prefix)])


def _wait_for(pred, proc: subprocess.Popen, timeout: float = 120) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.01)
    raise AssertionError("timed out waiting for the campaign process")


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper that never comes in a container does not count)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def _finish(tag: str) -> None:
    proc = _spawn("resume", tag, str(MAX))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()


def _check(tag: str) -> list[dict]:
    assert c.agreement_problems(tag) == []
    rows = Ledger(c.campaign_dir(tag) / "ledger.db").experiments()
    assert [r["n"] for r in rows] == list(range(MAX + 1))  # nothing lost, nothing twice
    assert rows[0]["description"] == "baseline"
    kept = [r for r in rows if r["status"] == "keep"]
    metrics = [r["metric"] for r in kept]
    assert metrics == sorted(metrics, reverse=True)  # every keep improved on the one before
    tsv = (c.campaign_dir(tag) / "results.tsv").read_text().splitlines()
    assert len(tsv) == MAX + 2
    return rows


@pytest.mark.parametrize("point", ["run", "record", "proposal", "vet"])
def test_kill_at_phase_then_resume(tmp_path, point):
    """Kill right after the k-th event of a kind (or mid-run), twice, then resume to the end."""
    program = make_repo(tmp_path / "repo", sleep=0.3)
    tag = f"k-{point}"
    proc = _spawn("start", str(program), str(ROOT / "roles" / "tiered"), tag, str(MAX))
    run_pid = c.campaign_dir(tag) / "run.pid"
    running: list[int] = []

    def mid_run(k: int) -> bool:
        """The k-th run is done and a later one is going: read its pid now (a short run removes
        its pid file as soon as it ends, so reading it after the kill would race)."""
        if _count(tag, "run_done") < k:
            return False
        try:
            running.append(int(run_pid.read_text()))
        except (FileNotFoundError, ValueError):  # not started yet, or written half-way
            return False
        return True

    for k in (1, 3):
        if point == "run":  # mid-run: the target is sleeping in its own process group
            seen = _wait_for(lambda k=k: mid_run(k), proc)
        else:
            seen = _wait_for(lambda k=k: _count(tag, point) >= k, proc)
        _kill(proc)
        assert seen, proc.stderr.read().decode()
        if point == "run":
            stale = running[-1]
        proc = _spawn("resume", tag, str(MAX))
        if point == "run":  # resume kills what the dead campaign left running
            _wait_for(lambda k=k: _count(tag, "campaign_resume") >= k, proc)
            time.sleep(0.2)
            assert not _alive(stale)
    _kill(proc)
    _finish(tag)
    _check(tag)


@pytest.mark.parametrize("point", ["vet:1", "run:2", "judge:2", "record:2", "propose:2"])
def test_killed_between_saved_writes_and_checkpoint(tmp_path, point):
    """The narrowest window: a step's writes are on disk, the checkpoint after it is not. The graph
    then reports no `next` node although the step is unfinished; resume must finish that step,
    not take the campaign for ended (and start a second branch of the loop beside it)."""
    program = make_repo(tmp_path / "repo")
    tag = "k-window"
    proc = _spawn("start", str(program), str(ROOT / "roles" / "tiered"), tag, str(MAX),
                  env={"NIGHTLAB_TEST_DIE_BEFORE": point})  # fmt: skip
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 137, err.decode()
    _finish(tag)
    _check(tag)


@pytest.mark.parametrize("point", ["propose:2", "propose:3", "propose:4"])
def test_killed_as_a_fan_out_round_closes(tmp_path, point):
    """Rounds of 2: a kill right after an experiment's record (a round's first, or its last, which
    closes it: statuses set, memory told, the branch moved) and before the checkpoint. The resumed
    campaign closes the round the same way; nothing stays pending, nothing is noted twice."""
    program = make_repo(tmp_path / "repo", fan_out="2")
    tag = "k-round"
    proc = _spawn("start", str(program), str(ROOT / "roles" / "tiered"), tag, str(MAX),
                  env={"NIGHTLAB_TEST_DIE_BEFORE": point})  # fmt: skip
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 137, err.decode()
    _finish(tag)
    rows = _check(tag)
    assert "pending" not in {r["status"] for r in rows}
    noted = sorted(n.evidence[-1] for n in NoteStore(home_dir()).notes(kind="experiment") if n.campaign == tag)
    assert noted == sorted(f"exp:{tag}:{i}" for i in range(1, MAX + 1))
    rounds = [e for e in _events(tag) if e["event"] == "round"]
    assert {e["first"] for e in rounds} == {1, 3, 5}
    for e in rounds:  # the kept one of each round is the best of it
        mine = [r for r in rows if e["first"] <= r["n"] <= e["last"] and r["metric"] is not None]
        assert e["kept"] is None or min(mine, key=lambda r: r["metric"])["n"] == e["kept"]


def test_kill_at_random_times(tmp_path):
    """Kills at arbitrary (seeded) moments once the loop is running, resuming each time."""
    program = make_repo(tmp_path / "repo", sleep=0.05)
    tag = "k-random"
    rng = random.Random(4)
    proc = _spawn("start", str(program), str(ROOT / "roles" / "tiered"), tag, str(MAX))
    kills = 0
    for kills in range(1, 9):
        started = _count(tag, "campaign_")
        if not _wait_for(lambda started=started: _count(tag, "campaign_") > started, proc):
            break  # finished on its own
        time.sleep(rng.uniform(0.0, 1.5))
        _kill(proc)
        proc = _spawn("resume", tag, str(MAX))
    _kill(proc)
    _finish(tag)
    rows = _check(tag)
    assert kills >= 3 and len(rows) == MAX + 1


def test_kill_during_start_leaves_a_startable_tag(tmp_path):
    """A kill before campaign.json exists leaves no campaign: starting again must work."""
    program = make_repo(tmp_path / "repo")
    proc = _spawn("start", str(program), str(ROOT / "roles" / "tiered"), "k-early", "1")
    _wait_for(lambda: (c.campaign_dir("k-early") / "worktree").exists(), proc)
    _kill(proc)
    (c.campaign_dir("k-early") / "campaign.json").unlink(missing_ok=True)  # as if killed before it
    proc = _spawn("start", str(program), str(ROOT / "roles" / "tiered"), "k-early", "1")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()
    assert c.agreement_problems("k-early") == []


NOISY = {"env": "{TINY_NOISE: '0.004'}", "noise": "{seed_env: TINY_SEED, baseline_runs: 3, max_replicates: 3}"}


def _check_runs(tag: str) -> None:
    """Every experiment's runs are replicates 0..runs-1, each recorded once."""
    ledger = Ledger(c.campaign_dir(tag) / "ledger.db")
    for row in ledger.experiments():
        assert [r["replicate"] for r in ledger.runs(row["n"])] == list(range(row["runs"])), row
    assert ledger.experiments()[0]["runs"] == 3


@pytest.mark.parametrize("point", ["run:2", "judge:3", "mid-replicate"])
def test_kill_during_replicates_then_resume(tmp_path, point):
    """kill -9 while an experiment's replicate runs are under way: no run lost or counted twice."""
    program = make_repo(tmp_path / "repo", sleep=0.3 if point == "mid-replicate" else 0.0, **NOISY)
    tag = f"k-rep-{point.replace(':', '')}"
    if point != "mid-replicate":
        proc = _spawn("start", str(program), str(ROOT / "roles" / "tiered"), tag, str(MAX),
                      env={"NIGHTLAB_TEST_DIE_BEFORE": point})  # fmt: skip
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 137, err.decode()
    else:
        proc = _spawn("start", str(program), str(ROOT / "roles" / "tiered"), tag, str(MAX))
        run_pid = c.campaign_dir(tag) / "run.pid"
        pids: list[int] = []

        def replicate_running() -> bool:  # a replicate of an experiment after the baseline
            done = [e for e in _events(tag) if e["event"] == "run_done"]
            if not any(e["exp"] > 0 and e["replicate"] >= 1 for e in done) or not run_pid.exists():
                return False
            try:
                pids.append(int(run_pid.read_text()))
            except ValueError:
                return False
            return True

        assert _wait_for(replicate_running, proc), proc.stderr.read().decode()
        _kill(proc)
        proc = _spawn("resume", tag, str(MAX))
        _wait_for(lambda: _count(tag, "campaign_resume") >= 1, proc)
        time.sleep(0.2)
        assert not _alive(pids[-1])
        _kill(proc)
    _finish(tag)
    _check(tag)
    _check_runs(tag)
