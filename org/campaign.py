"""Start, resume and inspect campaigns: the campaign directory, checkpointer and reconciliation.

A campaign lives in `$NIGHTLAB_HOME/campaigns/<tag>/`:
    campaign.json   resolved config (program/org paths, base commit, protected hashes, limits)
    worktree/       git worktree of the target repo on branch nightlab/<tag>
    ledger.db       experiments, model calls, failures (source of truth)
    results.tsv     regenerated from ledger.db after every experiment
    checkpoints.db  LangGraph SqliteSaver: the loop resumes from the last finished node
    events.jsonl    structlog JSON event log
    runs/NNNN.log   captured output of each run (size-capped)
Everything is validated before anything is written, so bad input never touches existing records.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import structlog
from pydantic import BaseModel, ValidationError

from org.errors import InputError, SpendCapReached
from org.lab import Lab
from org.ledger import Ledger, tsv_text
from org.program import Program, load_program
from org.prompts import check_role_variables
from org.roles import Org, load_org
from org.runner import kill_stale
from org.settings import home_dir, ollama_host
from org.state import initial_state
from org.verdict import noise_estimate
from org.workspace import Workspace, branch_name, git

_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class CampaignRecord(BaseModel):
    tag: str
    program: str  # path of the program file (re-read on resume, contract fields must not change)
    org: str
    repo: str
    base_commit: str
    created_at: float
    metric: str
    direction: str
    editable: list[str]
    protected_hashes: dict[str, str]
    fan_out: int = 1  # rounds of this many (org/rounds.py): a round in progress depends on it
    max_experiments: int | None = None  # --max-experiments override of the program's stop limit
    unsandboxed: bool = False  # --unsandboxed: runs without bubblewrap, by the user's choice
    memory_home: str | None = None  # a memory of its own (a comparison's arm); None: $NIGHTLAB_HOME's
    until: float | None = None  # `nightlab nightly --until`: the window's end (epoch seconds), this night's


def campaigns_dir() -> Path:
    return home_dir() / "campaigns"


def campaign_dir(tag: str) -> Path:
    return campaigns_dir() / tag


def load_record(tag: str) -> CampaignRecord:
    path = campaign_dir(tag) / "campaign.json"
    if not path.is_file():
        raise InputError(None, "tag", f"no campaign named {tag!r} in {campaigns_dir()}")
    try:
        return CampaignRecord.model_validate_json(path.read_text())
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(x) for x in err["loc"]) or "campaign.json"
        raise InputError(path, field, f"{err['msg']} (the campaign record is damaged; its ledger.db "
                         "and results.tsv are untouched)") from None


@contextmanager
def _locked(directory: Path, tag: str) -> Iterator[None]:
    """One live process per campaign: a second `resume` would otherwise kill the first one's run.
    flock is released by the kernel when its holder dies, so `kill -9` never leaves it stuck."""
    fh = (directory / "lock").open("a+", encoding="utf-8")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip() or "?"
        fh.close()
        raise InputError(None, "tag", f"campaign {tag!r} is already running (pid {holder}); "
                         f"wait for it or stop it before resuming") from None  # fmt: skip
    try:
        fh.truncate(0)
        fh.write(str(os.getpid()))
        fh.flush()
        yield
    finally:
        fh.close()


def _save_record(directory: Path, record: CampaignRecord) -> None:
    tmp = directory / "campaign.json.tmp"
    tmp.write_text(record.model_dump_json(indent=2))
    os.replace(tmp, directory / "campaign.json")


def validate_inputs(program_path: str | Path, org_path: str | Path) -> tuple[Program, Org]:
    """Load and cross-check program and org. Raises InputError; writes nothing."""
    program = load_program(program_path)
    org = load_org(org_path)
    check_role_variables(org.roles)
    proposer = org.roles["proposer"]
    source = (program.repo / program.knob_path).read_text(encoding="utf-8")
    if program.spec.knobs:  # the program's starting knobs must exist: checked now, applied at setup
        from org.knobs import set_knobs

        set_knobs(source, program.spec.knobs, program.path, program.spec.knob_style)
    if program.spec.smoke_knobs:  # and the smoke run's, on top of them
        from org.knobs import set_knobs

        set_knobs(source, program.spec.smoke_knobs, program.path, program.spec.knob_style, field="smoke_knobs")
    sampled = any(org.is_sampler(kind) for kind in org.roles)
    knob_mode = (proposer.spec.mode or "knob") == "knob" or sampled
    space = {"fixed_knobs": program.spec.fixed_knobs, "knob_ranges": program.spec.knob_ranges,
             "knob_moves": program.spec.knob_moves}
    if not (knob_mode or any(space.values())):
        return program, org  # edit mode on a target that need not have knobs at all
    from org.proposal import type_moves

    knobs = {k.name: k for k in program.knobs_of(source)}
    for field, named in space.items():
        if unknown := [n for n in named if n not in knobs]:
            raise InputError(program.path, field, f"{', '.join(unknown)}: no such knob in {program.knob_path}")
    for name, moves in program.spec.knob_moves.items():
        if wrong := [m for m in moves if m not in type_moves(knobs[name].type)]:
            raise InputError(program.path, f"knob_moves.{name}", f"{', '.join(wrong)} does not apply "
                             f"to {knobs[name].type} knob {name} = {knobs[name].expr}")  # fmt: skip
    if knob_mode and not knobs:
        raise InputError(program.path, "knob_file", f"{program.knob_path} has no knobs ({program.spec.knob_style}), "
                         "but the proposer works in knob mode")  # fmt: skip
    if sampled:  # a space with nothing to sample is the program's error now, not at experiment 1
        from org.sampler import space as sampler_space

        sampler_space(program, source)
    return program, org


def preflight(org: Org) -> None:
    """Every role needs a usable model (its own or its fallback) before anything is written: a
    missing key, an unreachable Ollama host or an unpulled model is bad input, not a 3 am crash."""
    from org.models.preflight import check_org, first_blocking_problem

    problem = first_blocking_problem(check_org(org))
    if problem is not None:
        raise problem


def check_embedding(org: Org) -> None:
    """An org that embeds its memory with an Ollama model needs that server and model up front."""
    if not org.spec.embedding.startswith("ollama:"):
        return  # minilm ships with nightlab (a missing package is a HarnessError at first use)
    from memory.embedding import ollama_parts
    from org.models.names import parse_model
    from org.models.preflight import ollama_problem

    model, url = ollama_parts(org.spec.embedding, ollama_host())
    why = ollama_problem(parse_model(f"ollama/{model}"), host=url)
    if why is not None:
        raise InputError(org.path / "org.md", "embedding", why)


def _event_log(fh: Any, tag: str) -> Any:
    return structlog.wrap_logger(
        structlog.WriteLogger(fh),
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(sort_keys=False),
        ],
    ).bind(campaign=tag)


def _open_lab(record: CampaignRecord, program: Program, org: Org, models: Any, memory: Any,
              progress: Callable[..., None] | None) -> Lab:  # fmt: skip
    directory = campaign_dir(record.tag)
    stop = program.spec.stop.overridden(max_experiments=record.max_experiments, until=record.until)
    if models is None:
        from org.models import ModelClient

        models = ModelClient()
    if memory is None:
        from memory import NoteStore

        home = Path(record.memory_home) if record.memory_home else home_dir()
        memory = NoteStore(home, embedding=org.spec.embedding, ollama_host=ollama_host())
    events = (directory / "events.jsonl").open("a", encoding="utf-8", buffering=1)
    return Lab(
        tag=record.tag, dir=directory, program=program, org=org,
        workspace=Workspace(directory / "worktree", keep=tuple(rel for rel, _ in program.data_links())),
        ledger=Ledger(directory / "ledger.db"),
        models=models, memory=memory, stop=stop,
        started_at=record.created_at, base_commit=record.base_commit,
        protected_hashes=record.protected_hashes, log=_event_log(events, record.tag), event_file=events,
        progress=progress or (lambda **_: None), sandboxed=sandboxing(org, record.unsandboxed),
    )  # fmt: skip


def _compiled(lab: Lab) -> tuple[Any, dict[str, Any], sqlite3.Connection]:
    from langgraph.checkpoint.sqlite import SqliteSaver

    from org.graph import build_graph

    conn = sqlite3.connect(str(lab.dir / "checkpoints.db"), check_same_thread=False)
    graph = build_graph().compile(checkpointer=SqliteSaver(conn))
    config = {"configurable": {"thread_id": lab.tag}, "recursion_limit": 1_000_000}
    return graph, config, conn


def _drive(lab: Lab, graph_input: Any) -> dict[str, Any]:
    graph, config, conn = _compiled(lab)
    try:
        # durability="sync": each checkpoint is on disk before the next node starts.
        return graph.invoke(graph_input, config, context=lab, durability="sync")
    except SpendCapReached as e:  # before the call that could pass it: a clean stop, resumable
        lab.log.info("stop", reason=str(e))
        lab.write_tsv()
        return {**graph.get_state(config).values, "stopped": str(e)}
    finally:
        conn.close()
        lab.close()


def sandboxing(org: Org, unsandboxed: bool) -> bool:
    """Do runs go under bubblewrap (org/bwrap.py)? Edit-mode proposers write code, and code a model
    wrote runs only under bubblewrap unless the user says `--unsandboxed` (recorded with every
    run). Knob-mode orgs change constants only: without bubblewrap they run with process-level
    isolation, and each run records that."""
    from org import bwrap

    if unsandboxed:
        return False
    why = bwrap.unavailable()
    if why is None:
        return True
    edit = sorted(name for name, role in org.roles.items() if role.spec.mode == "edit")
    if edit:
        raise InputError(org.path, "sandbox", f"{why}. This org's {', '.join(edit)} write code (edit mode), "
                         "which runs only under bubblewrap; or pass --unsandboxed to run it with process "
                         "isolation only (every run records it)")  # fmt: skip
    return False


def check_tag(tag: str, field: str = "tag") -> str:
    """A campaign's (or comparison's) name: it becomes a directory and a branch."""
    if not _TAG.match(tag):
        raise InputError(None, field, f"{tag!r}: use letters, digits, '.', '_' or '-'")
    return tag


def default_tag(program: Program) -> str:
    return f"{program.spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def start(program_path: str | Path, org_path: str | Path, tag: str | None = None,
          max_experiments: int | None = None, models: Any = None, memory: Any = None,
          progress: Callable[..., None] | None = None, unsandboxed: bool = False,
          memory_home: Path | None = None, until: float | None = None) -> dict[str, Any]:  # fmt: skip
    """Create a campaign, run its baseline, then loop until a stop condition. `memory_home`: the
    campaign's own memory store, kept in its record (resume uses it too)."""
    program, org = validate_inputs(program_path, org_path)
    sandboxing(org, unsandboxed)  # InputError before anything is written: edit mode needs bubblewrap
    if models is None:  # the real client (tests inject a scripted one)
        preflight(org)
    if memory is None:
        check_embedding(org)
    tag = check_tag(tag or default_tag(program))
    directory = campaign_dir(tag)
    if directory.exists() and not (directory / "campaign.json").exists():
        _remove(program.repo, directory, tag)  # a start killed before it saved anything
    if directory.exists():
        raise InputError(None, "tag", f"campaign {tag!r} already exists; `nightlab resume {tag}`")
    if git(program.repo, "rev-parse", "--verify", "--quiet", f"refs/heads/{branch_name(tag)}",
           check=False):  # fmt: skip
        raise InputError(None, "tag", f"branch {branch_name(tag)} already exists in {program.repo}")
    directory.mkdir(parents=True)
    with _locked(directory, tag):
        return _start_locked(program, org, tag, directory, max_experiments, models, memory, progress, unsandboxed,
                             memory_home, until)  # fmt: skip


def _start_locked(program: Program, org: Org, tag: str, directory: Path, max_experiments: int | None,
                  models: Any, memory: Any, progress: Callable[..., None] | None,
                  unsandboxed: bool, memory_home: Path | None, until: float | None) -> dict[str, Any]:  # fmt: skip
    ws = Workspace.create(program.repo, directory / "worktree", tag)
    record = CampaignRecord(
        tag=tag, program=str(program.path), org=str(org.path.resolve()), repo=str(program.repo),
        base_commit=ws.head(), created_at=time.time(), metric=program.spec.metric,
        direction=program.spec.direction, editable=program.editable_paths, fan_out=program.spec.fan_out,
        protected_hashes={p: ws.blob_hash(p) for p in program.protected_paths},
        max_experiments=max_experiments, unsandboxed=unsandboxed,
        memory_home=str(memory_home) if memory_home else None, until=until,
    )  # fmt: skip
    _save_record(directory, record)
    lab = _open_lab(record, program, org, models, memory, progress)
    lab.log.info("campaign_start", program=record.program, org=record.org, base=record.base_commit,
                 sandboxed=lab.sandboxed, unsandboxed=unsandboxed)  # fmt: skip
    try:
        return _drive(lab, initial_state())
    except InputError as e:
        # The target itself is broken (baseline failed): nothing was recorded, so leave no trace
        # but the setup's log, which the error points to (unless a proposal made while the
        # baseline ran was paid for: that spend stays on record)
        ledger = Ledger(directory / "ledger.db")
        if not ledger.experiments() and ledger.spend() == (0, 0):
            log = directory / "runs" / "setup.log"
            kept = home_dir() / "failed" / f"{tag}.setup.log"
            had_log = log.exists()
            if had_log:
                kept.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(log, kept)
            _remove(program.repo, directory, tag)
            if had_log and str(log) in e.message:
                raise InputError(e.path, e.field, e.message.replace(str(log), str(kept))) from e
        raise


def _remove(repo: Path, directory: Path, tag: str) -> None:
    git(repo, "worktree", "remove", "--force", str(directory / "worktree"), check=False)
    git(repo, "branch", "-D", branch_name(tag), check=False)
    shutil.rmtree(directory, ignore_errors=True)


def resume(tag: str, max_experiments: int | None = None, models: Any = None, memory: Any = None,
           progress: Callable[..., None] | None = None, until: float | None = None) -> dict[str, Any]:  # fmt: skip
    """Continue a campaign from its last checkpoint after a reconciliation pass."""
    record = load_record(tag)
    program, org = validate_inputs(record.program, record.org)
    for field, now, then in [("metric", program.spec.metric, record.metric),
                             ("direction", program.spec.direction, record.direction),
                             ("editable", program.editable_paths, record.editable),
                             ("fan_out", program.spec.fan_out, record.fan_out)]:  # fmt: skip
        if now != then:
            raise InputError(program.path, field, f"changed since the campaign started "
                             f"({then!r} -> {now!r}); start a new campaign instead")  # fmt: skip
    if models is None:
        preflight(org)
    if memory is None:
        check_embedding(org)
    with _locked(campaign_dir(tag), tag):
        return _resume_locked(record, program, org, max_experiments, models, memory, progress, until)


def _resume_locked(record: CampaignRecord, program: Program, org: Org, max_experiments: int | None,
                   models: Any, memory: Any, progress: Callable[..., None] | None,
                   until: float | None = None) -> dict[str, Any]:  # fmt: skip
    tag = record.tag
    # a night's window is that night's: a resume without one (a plain `resume`) runs without one
    update = {"until": until, **({"max_experiments": max_experiments} if max_experiments is not None else {})}
    if any(getattr(record, k) != v for k, v in update.items()):
        record = record.model_copy(update=update)
        _save_record(campaign_dir(tag), record)
    lab = _open_lab(record, program, org, models, memory, progress)
    for pid_file in sorted(lab.dir.glob("run*.pid")):  # slot 0's run.pid, and run.<i>.pid of the others
        if kill_stale(pid_file):
            lab.log.info("killed_stale_run", pid_file=pid_file.name)
    lab.write_tsv()  # results.tsv is a view of the ledger: rebuild it whatever happened before
    lab.log.info("campaign_resume", experiments=len(lab.ledger.experiments()))
    graph, config, conn = _compiled(lab)
    snapshot = graph.get_state(config)
    conn.close()
    graph_input: Any = None
    # `snapshot.next` leaves out a task whose writes were saved before the kill cut off the next
    # checkpoint: such a step is unfinished, not the end. Only no task at all means the graph ended.
    if not snapshot.tasks:
        if not snapshot.values:  # killed before the first checkpoint: start over cleanly
            graph_input = initial_state()
        else:  # finished earlier; continue only if a stop limit was raised
            from langgraph.types import Command

            if lab.stop_reason(snapshot.values["n"] - 1, 0):
                lab.close()
                return dict(snapshot.values)
            from org.state import rebaseline_due

            goto = "rebaseline" if rebaseline_due(snapshot.values, program) else "propose"
            graph_input = Command(goto=goto, update={"stopped": None})
    return _drive(lab, graph_input)


def agreement_problems(tag: str) -> list[str]:
    """Do git history, results.tsv and SQLite tell the same story? [] when they do."""
    record = load_record(tag)
    directory = campaign_dir(tag)
    ledger = Ledger(directory / "ledger.db")
    rows = ledger.experiments()
    ledger.close()
    problems: list[str] = []
    tsv = directory / "results.tsv"
    if not tsv.exists() or tsv.read_text() != tsv_text(rows, record.metric):
        problems.append("results.tsv differs from ledger.db")
    if [r["n"] for r in rows] != list(range(len(rows))):
        problems.append(f"experiment numbers are not 0..{len(rows) - 1}: {[r['n'] for r in rows]}")
    ws = Workspace(directory / "worktree")
    on_branch = set(ws.log(record.base_commit)) | {record.base_commit}
    for r in rows:
        if r["status"] == "keep" and r["commit"] not in on_branch:
            problems.append(f"kept experiment {r['n']} ({r['commit'][:7]}) is not on the branch")
        if r["status"] != "keep" and r["commit"] in on_branch and r["commit"] != ws.head():
            problems.append(f"{r['status']} experiment {r['n']} ({r['commit'][:7]}) is still on the branch")
    kept = [r["commit"] for r in rows if r["status"] == "keep"]
    if kept and kept[-1] != ws.head() and not ws.is_ancestor(kept[-1], ws.head()):
        problems.append("branch head does not descend from the last keep")
    if len({r["commit"] for r in rows}) != len(rows):
        problems.append("two experiments share a commit")
    return problems


def list_tags() -> list[str]:
    d = campaigns_dir()
    return sorted(p.name for p in d.iterdir() if (p / "campaign.json").exists()) if d.exists() else []


def summary(tag: str) -> dict[str, Any]:
    """Numbers for `nightlab status`."""
    record = load_record(tag)
    ledger = Ledger(campaign_dir(tag) / "ledger.db")
    try:
        rows = ledger.experiments()
        runs = [r for r in rows if r["n"] > 0]
        sigma, df = noise_estimate(ledger)
        kept = [r for r in rows if r["status"] == "keep"]
        best_row = (min if record.direction == "min" else max)(kept, key=lambda r: r["metric"]) if kept else None
        best = best_row["metric"] if best_row else None
        worse = (lambda d: d > 0) if record.direction == "min" else (lambda d: d < 0)
        tested = any(r.get("test_metric") is not None for r in rows)  # the program has a test command
        return {
            "tag": tag, "experiments": len(runs), "kept": sum(r["status"] == "keep" for r in runs),
            "crashed": sum(r["status"] == "crash" for r in runs),
            "rejected": len(ledger.failures()), "baseline": rows[0]["metric"] if rows else None,
            "best": best, "metric": record.metric, "spend_usd": ledger.total_cost(),
            "program": record.program, "org": record.org,
            "noise_sigma": sigma, "noise_df": df, "runs": ledger.run_count(),
            "inconclusive": sum(bool(r.get("inconclusive")) for r in runs),
            "best_test": best_row.get("test_metric") if best_row else None,
            # keeps that beat their parent on val but not on the held-out test split
            "test_flags": [{"n": r["n"], "description": r["description"], "delta": r["delta"],
                            "test_delta": r["test_delta"]}
                           for r in kept if r["n"] > 0 and r.get("test_delta") is not None and worse(r["test_delta"])],
            "untested": [r["n"] for r in kept if tested and r.get("test_metric") is None],
            "drift_checks": len(ledger.drift_checks()),
            "drift_flags": [{"exp": d["exp"], "after": d["after"], "metric": d["metric"], "reference": d["reference"],
                             "sigma": d["sigma"]} for d in ledger.drift_checks() if d["flagged"]],
            "drift_failed": [d["after"] for d in ledger.drift_checks() if d["metric"] is None],
        }  # fmt: skip
    finally:
        ledger.close()


def read_json_events(tag: str, limit: int = 50) -> list[dict[str, Any]]:
    path = campaign_dir(tag) / "events.jsonl"
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()[-limit:]
    return [json.loads(line) for line in lines if line.strip().startswith("{")]
