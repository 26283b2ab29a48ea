"""The Ray executor (org/slots.py) end to end on a local Ray with two CPU workers: every run of a
campaign is a Ray task, results merge into the one ledger, and a worker killed mid-run has its run
started again by Ray with nothing lost or counted twice. Scripted roles, the tiny real target."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from org import campaign as c
from org.ledger import Ledger
from tests.scripted import ScriptedClient
from tests.tiny import APPROVE, DIRECTIVE, knob, make_repo

ray = pytest.importorskip("ray")
ROLES = Path(__file__).resolve().parents[1] / "roles"
NOISY = {"env": "{TINY_NOISE: '0.004'}", "noise": "{seed_env: TINY_SEED, baseline_runs: 3, max_replicates: 3}"}


@pytest.fixture
def local_ray():
    ray.shutdown()
    yield
    ray.shutdown()


def _task_workers() -> list[int]:
    """Ray worker processes running a run right now (they rename themselves ray::<task>)."""
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True, check=True).stdout
    return [int(line.split()[0]) for line in out.splitlines()[1:] if "ray::_ray_task" in line]


def test_a_campaign_on_a_local_ray_with_two_workers_and_a_worker_killed_mid_run(tmp_path, local_ray):
    program = make_repo(tmp_path / "repo", sleep=3.0, executor="{kind: ray, slots: 2}", **NOISY)
    killed: list[int] = []

    def kill_one() -> None:  # the first worker seen running a run, once
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            for pid in _task_workers():
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.2)

    killer = threading.Thread(target=kill_one, daemon=True)
    killer.start()
    client = ScriptedClient(script={"proposer": [knob("LR", "x2"), knob("DEPTH", "+1")]},
                            default={"director": DIRECTIVE, "reviewer": APPROVE})  # fmt: skip
    state = c.start(program, ROLES / "tiered", tag="ray", max_experiments=2, models=client)
    killer.join(timeout=5)
    assert killed, "no Ray worker was seen running a run"
    assert state["stopped"] == "reached max_experiments=2"
    ledger = Ledger(c.campaign_dir("ray") / "ledger.db")
    rows = ledger.experiments()
    assert [r["status"] for r in rows] == ["keep", "keep", "discard"]
    for n in range(3):  # every run once, in order, with its seed: the killed one ran again
        runs = ledger.runs(n)
        assert [r["replicate"] for r in runs] == list(range(len(runs)))
        assert [r["seed"] for r in runs] == list(range(len(runs)))
        assert all(r["metric"] is not None for r in runs)
    assert len(ledger.runs(0)) == 3
    events = [json.loads(line) for line in (c.campaign_dir("ray") / "events.jsonl").read_text().splitlines()]
    assert sum(e["event"] == "run_done" for e in events) == sum(len(ledger.runs(n)) for n in range(3))
    assert c.agreement_problems("ray") == []
