"""Vet a committed change before it may spend a run. Cheapest gate first; the first rejection wins.

    scope -> syntax -> rules (static AST) -> knobs (constraints) -> duplicate (ledger, memory) -> smoke (a step or two, sandboxed) -> review (LLM)

A gate is a function `(VetInput) -> GateResult | None`: None is a clean pass, a `GateResult`
rejects or passes with a recorded warning. The static gates are listed in `GATES`; the smoke run
needs the program's command, and the peer review and memory duplicate check need the campaign's
clients, so those are passed in. Every gate's verdict and time is in `Verdict.records`.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from org.program import Program
from org.rules import check_change
from org.workspace import Workspace


@dataclass
class VetInput:
    workspace: Workspace
    program: Program
    best_commit: str  # the change is HEAD relative to this
    protected_hashes: dict[str, str]  # repo-relative path -> sha256 at campaign start
    hypothesis: str
    knob_move: str | None
    diff: str = ""
    log_dir: Path | None = None  # where the smoke log goes (a temp dir if None)
    sandboxed: bool = True  # the smoke run under bubblewrap, as the campaign's runs


@dataclass(frozen=True)
class GateResult:
    """A gate's verdict when it has something to say (None is a clean pass).

    `ok` False rejects the change for `reason`. `ok` True passes it with `reason` recorded as a
    warning; `advisory` marks a rejection by a model that may only advise (the reviewer's fallback,
    named by `model`, `reason` its words): the change passes and the rejection is recorded."""

    ok: bool
    reason: str = ""
    advisory: bool = False
    model: str = ""

    @property
    def recorded(self) -> str:
        """The reason as the ledger records it."""
        if self.advisory:
            return f"advisory rejection from reviewer {self.model} (it may only advise): {self.reason}"
        return self.reason


def reject(reason: str | None) -> GateResult | None:
    """A rejection for `reason`; None (a clean pass) when there is none."""
    return GateResult(ok=False, reason=reason) if reason else None


def warn(reason: str) -> GateResult:
    """A pass with `reason` recorded as a warning."""
    return GateResult(ok=True, reason=reason)


@dataclass
class GateRecord:
    gate: str
    ok: bool
    reason: str  # rejection reason, or the warning of a pass ("" if clean)
    seconds: float


@dataclass
class Verdict:
    ok: bool
    gate: str  # gate that decided ("" when all passed)
    reason: str = ""
    passed: list[str] = field(default_factory=list)  # gates passed, in order
    records: list[GateRecord] = field(default_factory=list)  # every gate that ran, in order


Gate = Callable[[VetInput], GateResult | None]


def scope_gate(v: VetInput) -> GateResult | None:
    """Only editable files changed, as UTF-8 text; protected files byte-identical to the start."""
    changed = v.workspace.changed_files(v.best_commit)
    if not changed:
        return reject("the change is empty (no file differs from the best commit)")
    outside = sorted(set(changed) - set(v.program.editable_paths))
    if outside:
        return reject(f"changes files outside the editable set: {', '.join(outside)}")
    for rel, digest in v.protected_hashes.items():
        if v.workspace.blob_hash(rel) != digest:
            return reject(f"protected file {rel} was modified")
    for rel in changed:
        p = v.workspace.path / rel
        if not p.exists():
            return reject(f"{rel} was deleted")
        data = p.read_bytes()
        if b"\0" in data:
            return reject(f"{rel} holds binary content (NUL bytes)")
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as e:
            return reject(f"{rel} is not UTF-8 text (byte {e.start})")
    return None


def syntax_gate(v: VetInput) -> GateResult | None:
    """Every changed Python file compiles."""
    for rel in v.workspace.changed_files(v.best_commit):
        if not rel.endswith(".py"):
            continue
        source = v.workspace.read(rel)
        try:
            compile(source, rel, "exec", dont_inherit=True)
        except SyntaxError as e:
            return reject(f"{rel} line {e.lineno}: SyntaxError: {e.msg}")
        except ValueError as e:  # e.g. null bytes
            return reject(f"{rel}: {e}")
    return None


def rules_gate(v: VetInput) -> GateResult | None:
    """Static AST rules (org/rules.py) over each changed Python file, old version vs new."""
    changed = v.workspace.changed_files(v.best_commit)
    before = {rel: v.workspace.show(v.best_commit, rel) for rel in changed}
    after = {rel: v.workspace.read(rel) for rel in changed}
    found = check_change({k: t for k, t in before.items() if t is not None}, after)
    if not found:
        return None
    more = f" (+{len(found) - 3} more)" if len(found) > 3 else ""
    return reject("; ".join(str(x) for x in found[:3]) + more)


def knobs_gate(v: VetInput) -> GateResult | None:
    """The knob file meets the program's knob constraints (org/constraint.py), so a shape the
    target would refuse costs no smoke run. A constraint whose names an edit turned into code is
    not checked here: the run still fails on it."""
    from org.constraint import binding, broken, explain
    from org.errors import InputError

    prog = v.program
    if prog.knob_path not in v.workspace.changed_files(v.best_commit):
        return None
    try:
        point = prog.point(v.workspace.read(prog.knob_path))
        best = prog.point(v.workspace.show(v.best_commit, prog.knob_path) or "")
    except InputError:
        return None  # the syntax gate reports a file that does not parse
    bad = broken(binding(prog.constraints, best), point)
    return reject(explain(bad[0], point) + " (a shape the target refuses)") if bad else None


def smoke_gate(v: VetInput) -> GateResult | None:
    """A step or two of the changed target in the sandbox, on CPU unless the program says
    otherwise (org/smoke.py; skipped if the program opts out)."""
    from org.smoke import SmokeKnobError, smoke_reason, smoke_run

    spec = v.program.spec
    if spec.smoke_timeout_s is None:
        return None
    log_dir = v.log_dir or Path(tempfile.mkdtemp(prefix="nightlab-smoke-"))
    try:
        res = smoke_run(v.program, v.workspace.path, log_dir / "smoke.log", v.sandboxed, protected=v.protected_hashes)
    except SmokeKnobError as e:
        return reject(f"the smoke run cannot shrink the changed target: {e}")
    return reject(smoke_reason(res, spec.metric))


GATES: list[tuple[str, Gate]] = [("scope", scope_gate), ("syntax", syntax_gate), ("rules", rules_gate)]


def vet(
    v: VetInput,
    duplicate: Gate | None = None,
    review: Gate | None = None,
    smoke: bool = True,
) -> Verdict:
    """Run the gates in order, cheapest first; `duplicate` and `review` are campaign-supplied."""
    gates = list(GATES)
    if v.program.spec.knob_constraints:  # a program without them gets no gate that does nothing
        gates.append(("knobs", knobs_gate))
    # The duplicate check is one memory lookup (~50 ms): before the smoke run (seconds of the
    # target) and the LLM review, so a repeat costs neither.
    if duplicate is not None:
        gates.append(("duplicate", duplicate))
    if smoke:
        gates.append(("smoke", smoke_gate))
    if review is not None:
        gates.append(("review", review))
    passed: list[str] = []
    records: list[GateRecord] = []
    for name, gate in gates:
        if name in ("duplicate", "review") and not v.diff:
            v.diff = v.workspace.diff(v.best_commit)
        start = time.monotonic()
        result = gate(v) or GateResult(ok=True)
        records.append(GateRecord(name, result.ok, result.recorded, time.monotonic() - start))
        if not result.ok:
            return Verdict(ok=False, gate=name, reason=result.reason, passed=passed, records=records)
        passed.append(name)
    return Verdict(ok=True, gate="", passed=passed, records=records)
