"""Optuna samplers as proposers (org/sampler.py): the space, the study kept across restarts, whole
campaigns with roles/tpe and roles/centaur on the tiny target, and bad role files."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from org import campaign as c
from org.errors import InputError
from org.ledger import Ledger
from org.program import load_program
from org.roles import load_org
from org.sampler import STUDY_FILE, SamplerProposer, space
from tests.scripted import ScriptedClient
from tests.tiny import APPROVE, DIRECTIVE, TRAIN, knob, make_repo

REPO = Path(__file__).resolve().parents[1]
ROLES = REPO / "roles"


def _study(tag: str) -> optuna.Study:
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(c.campaign_dir(tag) / STUDY_FILE)))
    return optuna.load_study(study_name=tag, storage=storage)


def test_the_quickstart_space_follows_the_program():
    program = load_program(REPO / "programs" / "quickstart.md")
    dims = {d.param: d for d in space(program, (REPO / "trainer" / "train.py").read_text())}
    # rates: 4x either side of the baseline, log scale
    assert dims["MATRIX_LR"].distribution == FloatDistribution(0.005, 0.08, log=True)
    # ranges from the program: linear where they span less than 10x or start at 0
    assert dims["MUON_MOMENTUM"].distribution == FloatDistribution(0.5, 0.99)
    assert dims["WARMUP_RATIO"].distribution == FloatDistribution(0.0, 0.5)
    # a size the program moves only by x2 / x0.5 stays a power of two: its exponent is sampled
    head = dims["log2(HEAD_DIM)"]
    assert head.pow2 and head.distribution == IntDistribution(3, 7) and head.value(6) == 64
    assert dims["DEPTH"].distribution == IntDistribution(2, 8)
    assert dims["USE_VALUE_EMBEDS"].distribution == CategoricalDistribution([False, True])
    # fixed knobs and the seed are never sampled
    assert not {"COMPILE", "EVAL_BATCH_SIZE", "SEED", "log2(EVAL_BATCH_SIZE)"} & dims.keys()


def test_a_restart_gets_the_trial_it_had_asked_and_a_new_attempt_fails_the_old(tmp_path):
    program = make_repo(tmp_path / "repo", fixed_knobs="[SLEEP_S]")
    prog = load_program(program)
    source = TRAIN.format(sleep=0.0)
    first = SamplerProposer("optuna/random", tmp_path, "s", prog, source)
    a = first.suggest(1, 0, source)
    again = SamplerProposer("optuna/random", tmp_path, "s", prog, source).suggest(1, 0, source)  # after kill -9
    assert (again.trial, again.values) == (a.trial, a.values)
    assert set(a.values) == {"LR", "DEPTH", "USE_GATE"}
    assert a.description.startswith(f"optuna/random trial {a.trial}: ")
    assert "no language model" in a.hypothesis
    b = SamplerProposer("optuna/random", tmp_path, "s", prog, source).suggest(1, 1, source)  # attempt 0 refused
    trials = {t.number: t for t in first.study.get_trials()}
    assert b.trial != a.trial and trials[a.trial].state == TrialState.FAIL
    assert trials[b.trial].state == TrialState.RUNNING


def test_a_tpe_campaign_tells_every_result_and_survives_a_restart(tmp_path):
    program = make_repo(tmp_path / "repo", fixed_knobs="[SLEEP_S]")
    client = ScriptedClient()  # a sampler org asks no model: any call fails the test
    c.start(program, ROLES / "tpe", tag="tpe", max_experiments=5, models=client)
    numbers = {t.user_attrs["exp"]: t.number for t in _study("tpe").get_trials()}
    state = c.resume("tpe", max_experiments=8, models=client)
    assert state["stopped"] == "reached max_experiments=8" and client.sent == []

    rows = Ledger(c.campaign_dir("tpe") / "ledger.db").experiments()
    assert [r["n"] for r in rows] == list(range(9))
    for r in rows[1:]:
        assert (r["role"], r["model"]) == ("proposer", "optuna/tpe")
        assert r["description"].startswith("optuna/tpe trial ") and "no language model" in r["hypothesis"]
    # one trial per experiment, the baseline's added from its file; the numbers kept across the restart
    trials = {t.user_attrs["exp"]: t for t in _study("tpe").get_trials()}
    assert sorted(trials) == list(range(9)) and trials[8].state == TrialState.RUNNING  # told at the next ask
    assert {n: trials[n].number for n in numbers} == numbers
    assert trials[0].params == {"LR": 0.01, "DEPTH": 4, "USE_GATE": False}
    for r in rows[:8]:
        t = trials[r["n"]]
        if r["status"] in ("keep", "discard"):
            assert t.state == TrialState.COMPLETE and math.isclose(t.value, r["metric"])
        else:  # a crash (DEPTH < 3) or a rejection has no metric to tell
            assert t.state == TrialState.FAIL
    # what a keep's file holds is what the trial set
    kept = [r for r in rows[1:] if r["status"] == "keep"]
    for r in kept:
        assert f"DEPTH = {trials[r['n']].params['DEPTH']}" in _show(program, r["commit"])


def _show(program: Path, commit: str) -> str:
    import subprocess

    return subprocess.run(["git", "show", f"{commit}:target/train.py"], cwd=program.parents[1],
                          capture_output=True, text=True, check=True).stdout  # fmt: skip


def test_centaur_gives_the_language_model_its_share_and_tells_the_sampler(tmp_path):
    program = make_repo(tmp_path / "repo", fixed_knobs="[SLEEP_S]")
    client = ScriptedClient(script={"proposer": [knob("LR", "x2", hypothesis="keep")]},
                            default={"director": DIRECTIVE, "reviewer": APPROVE})  # fmt: skip
    c.start(program, ROLES / "centaur", tag="cen", max_experiments=5, models=client)
    rows = Ledger(c.campaign_dir("cen") / "ledger.db").experiments()
    by = [(r["role"], r["model"]) for r in rows[1:]]
    llm = ("proposer", "local/gemma3-270m")
    assert by == [("sampler", "optuna/tpe")] * 3 + [llm, ("sampler", "optuna/tpe")]
    # a base model's words are not kept as a hypothesis: the row says what it picked
    assert rows[4]["description"] == "LR x2: " + rows[4]["description"].split(": ", 1)[1]
    assert rows[4]["hypothesis"].startswith("local/gemma3-270m (a base model) picked LR x2 from ")
    assert "keep" not in rows[4]["hypothesis"].split("picked")[0]
    trials = {t.user_attrs["exp"]: t for t in _study("cen").get_trials()}
    assert trials[4].user_attrs["by"] == "proposer" and trials[4].state == TrialState.COMPLETE
    assert math.isclose(trials[4].value, rows[4]["metric"])
    assert [s["role"] for s in client.sent if s["role"] == "proposer"] == ["proposer"]  # only experiment 4


@pytest.mark.parametrize(
    ("files", "where", "field", "says"),
    [
        ({"proposer.md": "model: optuna/sgd"}, "proposer.md", "model", "unknown sampler"),
        ({"proposer.md": "model: optuna/tpe", "director.md": "model: optuna/cmaes"}, "director.md", "model",
         "can only propose"),
        ({"proposer.md": "model: optuna/tpe\nfallback: local/gemma3-270m"}, "proposer.md", "fallback", "no fallback"),
        ({"proposer.md": "model: local/gemma3-270m\nstartup_trials: 3"}, "proposer.md", "startup_trials",
         "only a sampler"),
        ({"proposer.md": "model: local/gemma3-270m", "sampler.md": "model: local/gemma3-270m"}, "sampler.md",
         "model", "names a language model"),
        ({"proposer.md": "model: optuna/tpe", "sampler.md": "model: optuna/random"}, "org.md", "roles.proposer",
         "must be a language model"),
        ({"proposer.md": "model: moves/best"}, "proposer.md", "model", "unknown move picker"),
        ({"proposer.md": "model: moves/random\nmode: edit"}, "proposer.md", "mode", "knob-mode proposer"),
        ({"proposer.md": "model: local/gemma3-270m", "director.md": "model: moves/random"}, "director.md", "model",
         "knob-mode proposer"),
        ({"proposer.md": "model: moves/random\nfallback: local/gemma3-270m"}, "proposer.md", "fallback", "no fallback"),
    ],
)
def test_bad_sampler_roles_name_the_file_and_field(tmp_path, files, where, field, says):
    roles = "\n".join(f"  {Path(f).stem}: {f}" for f in files)
    share = "llm_share: 0.3\n" if "sampler.md" in files else ""
    (tmp_path / "org.md").write_text(f"---\nname: bad\nroles:\n{roles}\n{share}---\nbody\n")
    for name, front in files.items():
        (tmp_path / name).write_text(f"---\n{front}\n---\n")
    with pytest.raises(InputError) as e:
        load_org(tmp_path)
    assert Path(e.value.path).name == where and e.value.field == field and says in e.value.message


def test_llm_share_and_a_sampler_role_go_together(tmp_path):
    (tmp_path / "proposer.md").write_text("---\nmodel: local/gemma3-270m\n---\n")
    (tmp_path / "org.md").write_text("---\nname: half\nroles:\n  proposer: proposer.md\nllm_share: 0.5\n---\n")
    with pytest.raises(InputError) as e:
        load_org(tmp_path)
    assert Path(e.value.path).name == "org.md" and "llm_share" in e.value.message


def test_a_sampled_repeat_of_a_measured_point_is_told_its_result_not_proposed(tmp_path):
    program = make_repo(tmp_path / "repo", fixed_knobs="[SLEEP_S, LR, DEPTH]")  # only USE_GATE moves
    prog = load_program(program)
    source = TRAIN.format(sleep=0.0)
    sampler = SamplerProposer("optuna/random", tmp_path, "rep", prog, source, seed=1)
    baseline = {"n": 0, "status": "keep", "metric": 1.05, "commit": "base", "role": "baseline"}
    sampler.sync([baseline], lambda commit: source, pending={1, 2, 3, 4, 5})
    for n in range(1, 6):  # asked ahead: whatever the seed draws, the measured point is never proposed again
        s = sampler.suggest(n, 0, source)
        assert s.values == {"USE_GATE": True}
    repeats = [t for t in sampler.study.get_trials() if t.user_attrs.get("repeat")]
    assert all(t.state == TrialState.COMPLETE and t.value == 1.05 for t in repeats)


def test_a_point_that_failed_is_not_proposed_again(tmp_path):
    """DEPTH 3..8 and USE_GATE: the first trial is refused at vet (told FAIL as never run); however
    TPE or the seed draws, those values are not proposed again, and a repeat drawn is told FAIL."""
    program = make_repo(tmp_path / "repo", fixed_knobs="[SLEEP_S, LR]", knob_ranges="{DEPTH: [3, 8]}")
    prog = load_program(program)
    source = TRAIN.format(sleep=0.0)
    for name in ("optuna/random", "optuna/tpe"):
        (tmp_path / name.split("/")[1]).mkdir()
        sampler = SamplerProposer(name, tmp_path / name.split("/")[1], "fail", prog, source, seed=3, startup_trials=1)
        sampler.sync([{"n": 0, "status": "keep", "metric": 1.05, "commit": "base", "role": "baseline"}],
                     lambda commit: source, pending={1})  # fmt: skip
        refused = sampler.suggest(1, 0, source).values
        proposed = []
        for attempt in range(1, 12):  # each earlier attempt is told FAIL when the next is asked
            proposed.append(sampler.suggest(1, attempt, source).values)
        assert refused not in proposed, name
        repeats = [t for t in sampler.study.get_trials() if t.user_attrs.get("repeat")]
        assert all(t.state == TrialState.FAIL for t in repeats if sampler._values(t.params) != (4, False))


def test_a_trial_asked_ahead_and_run_as_an_earlier_experiment_is_told_that_experiments_result(tmp_path):
    """The pipeline asked trials for experiments 2 and 3 while 1 ran; 2 never ran (refused), so
    3's proposal runs as experiment 2: its trial is 2's now, the refused one FAIL, and the result
    of experiment 2 goes to the values that made it (again after a kill: retag is idempotent)."""
    program = make_repo(tmp_path / "repo", knob_ranges="{LR: [0.001, 0.1], DEPTH: [3, 6]}", fixed_knobs="[SLEEP_S]")
    prog = load_program(program)
    source = TRAIN.format(sleep=0.0)
    sampler = SamplerProposer("optuna/random", tmp_path, "ahead", prog, source, seed=3)
    sampler.sync([{"n": 0, "status": "keep", "metric": 1.05, "commit": "base", "role": "baseline"}],
                 lambda commit: source, pending={1})  # fmt: skip
    sampler.suggest(1, 0, source)
    refused = sampler.suggest(2, 1, source)
    made_ahead = sampler.suggest(3, 2, source)
    sampler.retag(3, 2, 2)
    sampler.retag(3, 2, 2)
    trials = {t.number: t for t in sampler.study.get_trials()}
    assert trials[refused.trial].state == TrialState.FAIL
    assert trials[made_ahead.trial].state == TrialState.RUNNING and trials[made_ahead.trial].user_attrs["exp"] == 2
    rows = [{"n": 1, "status": "discard", "metric": 1.2, "commit": "c1", "role": "sampler"},
            {"n": 2, "status": "discard", "metric": 1.3, "commit": "c2", "role": "sampler"}]
    sampler.sync(rows, lambda commit: source, pending={3})
    trials = {t.number: t for t in sampler.study.get_trials()}
    assert trials[made_ahead.trial].state == TrialState.COMPLETE and trials[made_ahead.trial].value == 1.3


def test_centaurs_sampler_takes_a_turn_its_language_model_has_nothing_left_for(tmp_path):
    """Only DEPTH may move (3..8), and memory holds all three of its moves from 4 (an earlier
    campaign); every other depth is worse, so the best stays the baseline. At experiment 4, the
    language model's turn, the sampler is asked instead and the language model never is."""
    from memory import NoteStore
    from org.settings import home_dir

    program = make_repo(tmp_path / "repo", fixed_knobs="[SLEEP_S, LR, USE_GATE]", knob_ranges="{DEPTH: [3, 8]}")
    store = NoteStore(home_dir())
    for move, depth in (("+1", 5), ("-1", 3), ("x2", 8)):
        store.add_experiment("earlier", "tiny", hypothesis="depth", change=f"DEPTH {move}: 4 -> {depth}",
                             status="discard", metric=1.1, metric_delta=0.01, knob_move=f"DEPTH 4->{depth}")  # fmt: skip
    client = ScriptedClient(script={"proposer": [knob("DEPTH", "+1")]},
                            default={"director": DIRECTIVE, "reviewer": APPROVE})  # fmt: skip
    state = c.start(program, ROLES / "centaur", tag="cen-dry", max_experiments=4, models=client, memory=store)
    assert state["stopped"] == "reached max_experiments=4"
    rows = Ledger(c.campaign_dir("cen-dry") / "ledger.db").experiments()
    assert [r["role"] for r in rows[1:]] == ["sampler"] * 4 and all(r["status"] != "keep" for r in rows[1:])
    assert "proposer" not in [s["role"] for s in client.sent]


def test_random_local_search_picks_offered_moves_without_a_model(tmp_path):
    """roles/local-search: the knob-mode proposer's menu, a uniform pick, no model call; replicate
    campaigns (other tags) pick differently, and the picks are the ledger's knob moves."""
    program = make_repo(tmp_path / "repo", fixed_knobs="[SLEEP_S]")
    client = ScriptedClient()  # any model call fails the test
    picks = {}
    for tag in ("ls-r1", "ls-r2"):
        state = c.start(program, ROLES / "local-search", tag=tag, max_experiments=5, models=client)
        assert state["stopped"] == "reached max_experiments=5"
        rows = Ledger(c.campaign_dir(tag) / "ledger.db").experiments()[1:]
        for r in rows:
            assert (r["role"], r["model"]) == ("proposer", "moves/random")
            assert r["hypothesis"].startswith("moves/random picked ") and "no language model" in r["hypothesis"]
            knob_name, move = r["hypothesis"].split(" picked ")[1].split(" from ")[0].split(" ")
            assert r["description"].startswith(f"{knob_name} {move}: ")  # applied as a knob move
        picks[tag] = [r["description"] for r in rows]
        assert len(set(picks[tag])) == len(picks[tag])  # a move run from the same best is not offered again
    assert client.sent == []
    assert picks["ls-r1"] != picks["ls-r2"]
