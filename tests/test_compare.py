"""`nightlab compare`: arms under equal budgets on the tiny target, replicate campaigns with their
own memories, a report with its plot, resume, and the plan's guards."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest

from org import campaign as c
from org import compare as cmp
from org.errors import InputError
from org.ledger import Ledger
from tests.scripted import ScriptedClient
from tests.tiny import make_repo

ROLES = Path(__file__).resolve().parents[1] / "roles"
ORGS = [str(ROLES / "random"), str(ROLES / "tpe")]


def test_two_arms_two_replicates_report_and_resume(tmp_path):
    program = make_repo(tmp_path / "repo", fixed_knobs="[SLEEP_S]")
    client = ScriptedClient()  # sampler orgs: no model is ever asked
    report = cmp.run_compare("cmp", program, ORGS, experiments=3, replicates=2, models=client)

    tags = [f"cmp-{arm}-r{r}" for r in (1, 2) for arm in ("random", "tpe")]
    assert [t for t in c.list_tags() if t.startswith("cmp-")] == sorted(tags)
    homes = set()
    for tag in tags:
        rows = Ledger(c.campaign_dir(tag) / "ledger.db").experiments()
        assert len(rows) == 4 and rows[0]["description"] == "baseline"
        record = c.load_record(tag)
        assert record.base_commit == cmp.ComparePlan.model_validate_json(
            (cmp.compares_dir() / "cmp" / cmp.PLAN).read_text()).base_commit
        homes.add(record.memory_home)
        assert (Path(record.memory_home) / "memory.db").exists()  # each campaign noted into its own memory
    assert len(homes) == 4
    # replicates of one arm draw differently (the sampler's seed is its campaign's)
    descriptions = {t: [r["description"] for r in Ledger(c.campaign_dir(t) / "ledger.db").experiments()[1:]]
                    for t in tags}  # fmt: skip
    assert descriptions["cmp-random-r1"] != descriptions["cmp-random-r2"]

    text = report.read_text()
    assert "| random | 2/2 |" in text and "| tpe | 2/2 |" in text
    rows = json.loads((report.parent / "report.json").read_text())
    assert [r["arm"] for r in rows] == ["random", "tpe"]
    assert rows[0]["vs_first"] == "—" and rows[1]["vs_first"].startswith(("p ", "identical", "no spread"))
    assert all("±" in r["best_delta"] for r in rows) and all(r["runs"] >= 8 for r in rows)
    image = mpimg.imread(report.parent / cmp.PLOT)
    assert image.shape[0] > 300 and len(np.unique(image.reshape(-1, image.shape[-1]), axis=0)) > 20  # not blank

    # the same command again: everything is done, nothing runs
    runs = {t: Ledger(c.campaign_dir(t) / "ledger.db").run_count() for t in tags}
    cmp.run_compare("cmp", program, ORGS, experiments=3, replicates=2, models=client)
    assert {t: Ledger(c.campaign_dir(t) / "ledger.db").run_count() for t in tags} == runs


def test_a_comparison_resumes_a_campaign_cut_short(tmp_path):
    program = make_repo(tmp_path / "repo", fixed_knobs="[SLEEP_S]")
    client = ScriptedClient()
    # the first campaign was interrupted after 1 of its 3 experiments (as by kill -9 between them)
    c.start(program, ORGS[0], tag="cut-random-r1", max_experiments=1, models=client,
            memory_home=cmp.compares_dir() / "cut" / "memory" / "cut-random-r1")  # fmt: skip
    cmp.run_compare("cut", program, ORGS[:1], experiments=3, replicates=1, models=client)
    rows = Ledger(c.campaign_dir("cut-random-r1") / "ledger.db").experiments()
    assert [r["n"] for r in rows] == [0, 1, 2, 3]


def test_the_plan_is_fixed_and_every_arm_starts_from_the_same_commit(tmp_path):
    program = make_repo(tmp_path / "repo", fixed_knobs="[SLEEP_S]")
    client = ScriptedClient()
    cmp.run_compare("fixed", program, ORGS[:1], experiments=1, replicates=1, models=client)
    with pytest.raises(InputError) as e:  # other settings under the same name
        cmp.run_compare("fixed", program, ORGS[:1], experiments=2, replicates=1, models=client)
    assert e.value.field == "experiments" and "use another --name" in e.value.message
    with pytest.raises(InputError) as e:
        cmp.run_compare("twice", program, [ORGS[0], ORGS[0]], experiments=1, replicates=1, models=client)
    assert e.value.field == "orgs"
    # the repo moves between two arms' starts: the next arm refuses to start from another commit
    plan_dir = cmp.compares_dir() / "moved"
    cmp.run_compare("moved", program, ORGS[:1], experiments=1, replicates=1, models=client)
    repo = program.parents[1]
    (repo / "NOTES").write_text("x")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "add", "NOTES"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "moved"], cwd=repo, check=True)
    plan = json.loads((plan_dir / cmp.PLAN).read_text())
    plan["replicates"] = 2  # as if the comparison had asked for a second replicate from the start
    (plan_dir / cmp.PLAN).write_text(json.dumps(plan))
    with pytest.raises(InputError) as e:
        cmp.run_compare("moved", program, ORGS[:1], experiments=1, replicates=2, models=client)
    assert e.value.field == "HEAD" and "same commit" in e.value.message
