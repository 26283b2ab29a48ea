"""`nightlab meta`: strategy variants scored by short comparisons, the contract never changed, the
winner written beside the program, resume, and a director answer that tries to change the contract."""

from __future__ import annotations

from pathlib import Path

import pytest

from org import meta as m
from org.errors import InputError
from org.program import load_program
from tests.scripted import ScriptedClient
from tests.tiny import make_repo

ROLES = Path(__file__).resolve().parents[1] / "roles"


def _variant(text: str) -> dict:
    return {"rationale": f"try {text}", "strategy": f"# Strategy\n\n{text}: tune the learning rate with care first."}


def test_a_round_scores_variants_and_writes_the_winner_beside_the_program(tmp_path):
    program = make_repo(tmp_path / "repo", fixed_knobs="[SLEEP_S]")
    original = program.read_text()
    client = ScriptedClient(script={"director": [_variant("alpha"), None, _variant("gamma")]},
                            default={"director": None})  # then nothing usable  # fmt: skip
    record = m.run_meta("mm", program, str(ROLES / "random"), rounds=2, variants=2, experiments=2,
                        replicates=1, models=client)  # fmt: skip

    assert program.read_text() == original  # the program itself is never touched
    # round 1: alpha, then an unusable answer; round 2: gamma, then another
    assert [(v.round, v.index) for v in record.tried] == [(1, 0), (1, 1), (2, 1)]
    assert all(v.score is not None and v.campaigns == 1 for v in record.tried)
    spec = load_program(program).spec
    for v in record.tried:
        variant = load_program(v.file)
        assert variant.spec.model_dump(exclude={"repo"}) == spec.model_dump(exclude={"repo"})
    assert "alpha" in load_program(record.tried[1].file).strategy
    diff = Path(record.tried[1].file).with_suffix(".diff").read_text()
    assert "+alpha: tune the learning rate" in diff and "-Tune the learning rate first" in diff
    # the director saw the scores so far
    prompt = [s for s in client.sent if s["role"] == "director"][-1]["messages"][0]["content"]
    assert "round 1 variant 0:" in prompt and "(incumbent)" in prompt

    winner = Path(record.winner_file)
    assert winner == program.with_name("tiny.mm.md") and winner.exists()
    best = min(record.tried, key=lambda v: (v.score, v.round, v.index))
    assert record.tried[record.incumbent].score == best.score
    assert load_program(winner).strategy == load_program(record.tried[record.incumbent].file).strategy
    assert winner.read_text().split("---")[1] == original.split("---")[1]  # the front matter, byte for byte

    # the same command again: nothing is asked again and no campaign runs again
    sent = len(client.sent)
    again = m.run_meta("mm", program, str(ROLES / "random"), rounds=2, variants=2, experiments=2,
                       replicates=1, models=client)  # fmt: skip
    assert len(client.sent) == sent and [v.file for v in again.tried] == [v.file for v in record.tried]
    assert again.asked == {"1": 2, "2": 2}


def test_a_variant_cannot_change_the_contract(tmp_path, monkeypatch):
    program = make_repo(tmp_path / "repo", fixed_knobs="[SLEEP_S]")
    out = tmp_path / "elsewhere" / "v.md"
    # a body that smuggles a second front-matter block stays body text: the contract is unchanged
    m._write_variant(program, "---\nmetric: val_loss\ndirection: max\n---\nmore", out)
    assert load_program(out).spec.metric == "val_bpb" and load_program(out).repo == load_program(program).repo
    # a program naming its repo relatively still loads from the meta directory, the same repo
    relative = program.with_name("rel.md")
    relative.write_text(program.read_text().replace("name: tiny", "name: tiny\nrepo: ."))
    m._write_variant(relative, "Tune it.", out)
    assert load_program(out).repo == load_program(relative).repo and out.read_text().count("repo:") == 1
    # the guard itself: a front matter that loads as another contract is refused, and no file is left
    real, out2 = m.split_program, tmp_path / "changed.md"
    monkeypatch.setattr(m, "split_program", lambda text, path: (real(text, path)[0].replace(
        "direction: min", "direction: max"), ""))  # fmt: skip
    with pytest.raises(InputError) as e:
        m._write_variant(program, "Tune it.", out2)
    monkeypatch.undo()
    assert e.value.field == "front matter" and not out2.exists()
    # a program whose front matter is not closed is refused with its file and field
    broken = tmp_path / "broken.md"
    broken.write_text("---\nname: x\n")
    with pytest.raises(InputError) as e:
        m.split_program(broken.read_text(), broken)
    assert e.value.field == "front matter"


def test_meta_refuses_a_base_model_director_before_anything_runs(tmp_path):
    """Offline, meta's director would be the embedded base model: refused naming the role file and
    field, nothing written; a strategy a base model gave anyway (a failover mid-call) is not used."""
    from org.errors import exit_code

    program = make_repo(tmp_path / "repo", fixed_knobs="[SLEEP_S]")
    client = ScriptedClient(default={"director": _variant("alpha")}, down={"director"})
    with pytest.raises(InputError) as e:
        m.run_meta("base", program, str(ROLES / "random"), rounds=1, variants=1, experiments=1,
                   replicates=1, models=client)  # fmt: skip
    assert e.value.path == str(m.DIRECTOR) and e.value.field == "model" and exit_code(e.value) == 2
    assert "local/gemma3-270m" in str(e.value) and client.sent == [] and not m.meta_dir("base").exists()

    over = ScriptedClient(default={"director": _variant("alpha")}, answered_by={"director": "local/gemma3-270m"})
    record = m.run_meta("over", program, str(ROLES / "random"), rounds=1, variants=1, experiments=1,
                        replicates=1, models=over)  # fmt: skip
    assert [(v.round, v.index) for v in record.tried] == [(1, 0)] and record.asked == {"1": 1}
