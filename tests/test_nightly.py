"""`nightlab nightly` and the morning report: window arithmetic, a night that stops before its
window closes and resumes the next, and the report (markdown, plot, HTML rendered by Chromium)."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
import time
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest

from org import campaign as c
from org import nightly as n
from org import report as r
from org.errors import InputError
from org.ledger import Ledger
from org.program import StopSpec
from tests.scripted import ScriptedClient
from tests.tiny import APPROVE, DIRECTIVE, knob, make_repo

ROLES = Path(__file__).resolve().parents[1] / "roles"


def test_the_deadline_is_the_next_such_time():
    eleven_pm = dt.datetime(2026, 12, 1, 23, 0)
    assert dt.datetime.fromtimestamp(n.deadline("07:00", eleven_pm)) == dt.datetime(2026, 12, 2, 7, 0)
    six_am = dt.datetime(2026, 12, 2, 6, 0)
    assert dt.datetime.fromtimestamp(n.deadline("07:00", six_am)) == dt.datetime(2026, 12, 2, 7, 0)
    with pytest.raises(InputError) as e:
        n.deadline("7am")
    assert e.value.field == "until"


def test_no_experiment_starts_that_could_end_after_the_window():
    stop = StopSpec(until=1000.0)
    assert stop.reason(3, 0, 0.0, 0.0, now=900.0, next_s=99.0) is None  # ends at 999
    assert stop.reason(3, 0, 0.0, 0.0, now=900.0, next_s=100.0) is None  # ends exactly at the edge
    why = stop.reason(3, 0, 0.0, 0.0, now=900.0, next_s=100.5)
    assert why is not None and why.startswith("the window closes at ")


def _any_offered(schema, messages) -> dict:
    """The first move the proposer's schema offers (the grammar's choices): never a repeat."""
    name, moves = next(iter(schema.knob_moves.items()))
    return knob(name, moves[0])


def _client() -> ScriptedClient:
    moves = [knob("LR", "x2"), knob("DEPTH", "+1"), knob("USE_GATE", "toggle"), knob("LR", "x0.5")]
    return ScriptedClient(script={"proposer": moves},
                          default={"director": DIRECTIVE, "reviewer": APPROVE, "proposer": _any_offered,
                                   "compactor": {"lessons": []}})  # a fast night reaches compact_every  # fmt: skip


def test_a_night_stops_between_experiments_before_its_window_and_the_next_resumes(tmp_path):
    # 1 s runs with a 5 s timeout: the baseline's worst case is 10 s (one run at the timeout, and
    # its test), an experiment's about 7 s (two runs at 1.25x the longest seen, each with a test)
    program = make_repo(tmp_path / "repo", sleep=1.0, run_timeout_s="5", test="python -m target.heldout",
                        test_metric="test_bpb")  # fmt: skip
    client = _client()
    until = time.time() + 30
    tag, state = n.run_nightly(str(program), str(ROLES / "tiered"), until, models=client)
    assert tag == "tiny-nightly" and state["stopped"].startswith("the window closes at ")
    ledger = Ledger(c.campaign_dir(tag) / "ledger.db")
    rows = ledger.experiments()
    assert len(rows) >= 2  # the baseline and at least one experiment
    assert max(r["created_at"] for r in rows) <= until  # every experiment ended inside the window
    assert max(x["created_at"] for x in ledger.db["runs"].rows) <= until
    # the next night resumes the same campaign: last night's gap is not an experiment's length
    until2 = time.time() + 20
    tag2, state2 = n.run_nightly(str(program), str(ROLES / "tiered"), until2, models=client)
    more = Ledger(c.campaign_dir(tag) / "ledger.db").experiments()
    assert tag2 == tag and len(more) > len(rows) and max(r["created_at"] for r in more) <= until2
    assert state2["stopped"].startswith("the window closes at ")
    # a plain resume afterwards is not held to last night's window
    assert c.load_record(tag).until == until2
    c.resume(tag, max_experiments=len(more), models=client)
    assert c.load_record(tag).until is None


def test_a_window_too_short_for_the_baseline_starts_nothing(tmp_path):
    program = make_repo(tmp_path / "repo")
    tag, state = n.run_nightly(str(program), str(ROLES / "tiered"), time.time() + 5, models=_client())
    assert state is None and not c.campaign_dir(tag).exists()


def test_the_report_has_every_section_a_plot_and_renders(tmp_path):
    program = make_repo(tmp_path / "repo", smoke_timeout_s="null", test="python -m target.heldout", test_metric="test_bpb")
    client = ScriptedClient(
        script={"proposer": [knob("LR", "x2"), knob("DEPTH", "+1"), knob("DEPTH", "x0.5"), knob("USE_GATE", "toggle")],
                "reviewer": [APPROVE, APPROVE, APPROVE, {"approve": False, "reason": "no evidence"}]},
        default={"director": DIRECTIVE, "reviewer": APPROVE, "proposer": knob("LR", "x2")})  # fmt: skip
    c.start(program, ROLES / "tiered", tag="rep", max_experiments=4, models=client)
    md, html = r.write("rep")
    text = md.read_text()
    for section in ("# rep: 4 experiments", "**Stopped:** reached max_experiments=4", "## Kept changes",
                    "## Reproduce the best", "## Spend and keep rate by role", "## Vetting", "## Lessons from memory",
                    "## Drift", "| 1 | LR x2: 0.01 -> 0.02 |", "- review: 1 refused", "python -m target.train"):
        assert section in text, section
    from click.testing import CliRunner

    from org.cli import cli

    out = CliRunner().invoke(cli, ["report", "rep", "--json"])
    assert out.exit_code == 0, out.output
    d = json.loads(out.output)  # report --json
    status = json.loads(CliRunner().invoke(cli, ["status", "rep", "--json"]).output)
    assert status[0]["tag"] == "rep" and status[0]["experiments"] == 4 and status[0]["agreement_problems"] == []
    assert d["keeps"] >= 1 and d["kept"][0]["test_delta"] is not None and d["refused"] == {"review": 1}
    image = mpimg.imread(md.parent / r.PLOT)
    assert image.shape[0] >= 400 and len(np.unique(image.reshape(-1, image.shape[-1]), axis=0)) > 50
    page = html.read_text()
    assert "data:image/png;base64," in page and "src=\"progress.png\"" not in page  # self-contained
    browser = shutil.which("chromium") or shutil.which("chromium-headless-shell")
    assert browser, "Debian's chromium renders the report here (apt-get install chromium; .ci/run does)"
    shot = tmp_path / "shot.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
                    "--window-size=1000,1400", html.as_uri()], check=True, capture_output=True, timeout=120)  # fmt: skip
    pixels = mpimg.imread(shot)
    assert pixels.shape[:2] == (1400, 1000) and pixels[..., :3].std() > 0.05  # not blank


def test_the_mlflow_export_round_trips_through_mlflows_client(tmp_path):
    from org.export import export_mlflow, exported_runs

    program = make_repo(tmp_path / "repo", smoke_timeout_s="null")
    client = ScriptedClient(script={"proposer": [knob("LR", "x2"), knob("DEPTH", "x0.5"), knob("DEPTH", "+1")]},
                            default={"director": DIRECTIVE, "reviewer": APPROVE})  # fmt: skip
    c.start(program, ROLES / "tiered", tag="mlf", max_experiments=3, models=client)
    uri, added = export_mlflow("mlf")
    rows = Ledger(c.campaign_dir("mlf") / "ledger.db").experiments()
    assert added == len(rows) == 4 and uri.startswith("sqlite:///")
    runs = {int(x.data.tags["nightlab.exp"]): x for x in exported_runs("mlf", uri)}
    assert sorted(runs) == [0, 1, 2, 3]
    for row in rows:
        got = runs[row["n"]]
        assert got.data.tags["status"] == row["status"] and got.data.tags["commit"] == row["commit"]
        assert got.info.status == ("FINISHED" if row["status"] in ("keep", "discard") else "FAILED")
        if row["metric"] is not None:
            assert got.data.metrics["val_bpb"] == pytest.approx(row["metric"])
    assert runs[1].data.params["LR"] == "0.02" and runs[0].data.params["DEPTH"] == "4"  # knobs at each commit
    assert export_mlflow("mlf")[1] == 0  # again: nothing new, nothing doubled
    assert len(exported_runs("mlf", uri)) == 4


def test_model_written_text_cannot_put_html_in_the_report():
    import markdown

    for attack in ("<img src=x onerror=alert(1)>", "<script>alert(1)</script>", "&lt;script&gt;", "a | b <b>c</b>"):
        page = markdown.markdown(f"| h |\n|---|\n| {r._cell(attack)} |", extensions=["tables"])
        assert "<img" not in page and "<script" not in page and "<b>" not in page, page
