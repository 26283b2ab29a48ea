"""Red-team suite: hostile and legitimate edits to trainer/train.py, run through the real vet gates.

Each case in `cases/*.yaml` holds `expect` (blocked | allowed), `why`, `path` (repo-relative file
the edit targets) and `edits` (search/replace blocks, as a proposer's EditProposal). A case is
applied the way the campaign's apply node does it (org.proposal.apply_edits on the editable
files, one commit in a scratch git repo holding a copy of trainer/) and then vetted by
org.vet.vet: scope, syntax, static rules and, with `smoke=True`, the sandboxed smoke run.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from org.errors import InputError
from org.program import load_program
from org.proposal import SearchReplace, apply_edits
from org.sandbox import file_hashes
from org.vet import VetInput, vet
from org.workspace import Workspace

ROOT = Path(__file__).resolve().parents[2]
CASES = Path(__file__).parent / "cases"
PROGRAM = """---
name: redteam
target: trainer/
editable: [train.py]
protected: [prepare.py, corpus.py, scoring.py, heldout.py, remote.py, serve.py]
run: python -m trainer.train
env:
  NIGHTLAB_PRESET: cpu
metric: val_bpb
smoke_timeout_s: {smoke}
---
Red-team scratch program.
"""


@dataclass
class Case:
    name: str
    expect: str
    why: str
    path: str
    edits: list[dict[str, str]]


@dataclass
class Outcome:
    case: Case
    blocked: bool
    stage: str
    reason: str
    seconds: float

    @property
    def correct(self) -> bool:
        return self.blocked == (self.case.expect == "blocked")


def load_cases(directory: Path = CASES) -> list[Case]:
    out = []
    for p in sorted(directory.glob("*.yaml")):
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
        if data.get("expect") not in ("blocked", "allowed"):
            raise InputError(p, "expect", "must be 'blocked' or 'allowed'")
        out.append(Case(p.stem, data["expect"], data.get("why", ""), data["path"], data["edits"]))
    return out


class Bench:
    """A scratch git repo with a copy of trainer/ and a program; one case at a time."""

    def __init__(self, smoke_timeout_s: float | None = None):
        self.dir = Path(tempfile.mkdtemp(prefix="nightlab-redteam-"))
        shutil.copytree(ROOT / "trainer", self.dir / "trainer", ignore=shutil.ignore_patterns("__pycache__"))
        (self.dir / "programs").mkdir()
        smoke = "null" if smoke_timeout_s is None else str(smoke_timeout_s)
        (self.dir / "programs" / "redteam.md").write_text(PROGRAM.format(smoke=smoke))
        git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
        subprocess.run(["git", "init", "-q", "-b", "main"], cwd=self.dir, check=True)
        subprocess.run([*git, "add", "-A"], cwd=self.dir, check=True)
        subprocess.run([*git, "commit", "-qm", "base"], cwd=self.dir, check=True)
        self.program = load_program(self.dir / "programs" / "redteam.md")
        self.ws = Workspace(self.dir)
        self.base = self.ws.head()
        self.protected = file_hashes(self.dir, self.program.protected_paths)
        self.smoke = smoke_timeout_s is not None

    def run(self, case: Case) -> Outcome:
        start = time.monotonic()
        self.ws.reset(self.base)
        prog = self.program
        files = {rel: self.ws.read(prog.target_path(rel)) for rel in prog.spec.editable}
        target_rel = case.path.removeprefix(prog.spec.target)
        try:
            edits = [SearchReplace(path=target_rel, **e) for e in case.edits]
            new = apply_edits(files, edits)
        except (InputError, ValueError, KeyError) as e:  # as the apply node: the edit is rejected
            return Outcome(case, True, "apply", str(e), time.monotonic() - start)
        for rel, text in new.items():
            (self.dir / prog.target_path(rel)).write_bytes(text.encode("utf-8", errors="surrogateescape"))
        self.ws.commit(f"case {case.name}", prog.editable_paths)
        v = VetInput(workspace=self.ws, program=prog, best_commit=self.base,
                     protected_hashes=self.protected, hypothesis=case.why, knob_move=None,
                     log_dir=self.dir / "logs" / case.name)  # fmt: skip
        verdict = vet(v, smoke=self.smoke)
        return Outcome(case, not verdict.ok, verdict.gate, verdict.reason, time.monotonic() - start)

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def run_suite(smoke_timeout_s: float | None = None, cases: list[Case] | None = None) -> list[Outcome]:
    bench = Bench(smoke_timeout_s)
    try:
        return [bench.run(c) for c in (cases if cases is not None else load_cases())]
    finally:
        bench.close()
