"""Smoke gate: the changed target runs a step or two in the sandbox before a real run.

The harness (trainer/prepare.py) shortens the budget and the evaluation when NIGHTLAB_SMOKE=1 and
stops the loop after NIGHTLAB_SMOKE_STEPS optimizer steps; train.py cannot set either itself (the
static rules reject environment access). Catches import errors, shape errors, NaNs (train.py
prints FAIL and exits 1) and anything the sandbox rejects.

The smoke runs on the program's own preset and data (its env is kept), so a GPU program is
smoke-tested on the data its setup prepared. With `smoke_device: cpu` (the default) every GPU is
hidden from it, and `smoke_knobs` shrinks the model in a scratch copy of the changed tree: the
changed code runs, at a size a CPU takes seconds for, and a GPU a run is timing on is never shared.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from org.errors import InputError
from org.measure import measure
from org.runner import parse_number
from org.sandbox import SandboxResult
from org.untrusted import fence

if TYPE_CHECKING:
    from org.program import Program

SMOKE_SECONDS = "2"  # of wall clock, for a preset whose budget is time (a step cap also holds)


def smoke_env(program: Program) -> dict[str, str]:
    """What the harness sets for a smoke run, on top of the program's env."""
    env = {"NIGHTLAB_SMOKE": "1", "NIGHTLAB_SMOKE_SECONDS": SMOKE_SECONDS,
           "NIGHTLAB_SMOKE_STEPS": str(program.spec.smoke_steps)}  # fmt: skip
    if program.spec.smoke_device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


class SmokeKnobError(Exception):
    """The changed tree no longer has a knob the program's `smoke_knobs` sets."""


def shrunk_copy(program: Program, cwd: Path, into: Path) -> Path:
    """A scratch copy of the changed tree `cwd` with the program's `smoke_knobs` set (links kept as
    links: data files stay where they are). Raises SmokeKnobError when the change removed one."""
    from org.knobs import set_knobs

    shutil.copytree(cwd, into, symlinks=True, ignore=shutil.ignore_patterns(".git"))
    knob_file = into / program.knob_path
    try:
        text = set_knobs(knob_file.read_text(encoding="utf-8"), program.spec.smoke_knobs, program.path,
                         program.spec.knob_style, field="smoke_knobs")  # fmt: skip
    except InputError as e:
        raise SmokeKnobError(str(e)) from e
    knob_file.write_text(text, encoding="utf-8")
    return into


def smoke_run(program: Program, cwd: Path, log_path: Path, sandboxed: bool,
              protected: dict[str, str] | None = None) -> SandboxResult:  # fmt: skip
    """A step or two of the target, evaluated as a full run is (org/measure.py). Raises
    SmokeKnobError when `smoke_knobs` cannot be set on the changed tree."""
    assert program.spec.smoke_timeout_s is not None
    out = log_path.with_suffix(".out")
    scratch = Path(tempfile.mkdtemp(prefix="nightlab-smoke-tree-")) if program.spec.smoke_knobs else None
    try:
        tree = shrunk_copy(program, cwd, scratch / "tree") if scratch else cwd
        return measure(program, tree, smoke_env(program), log_path, out, sandboxed, program.spec.smoke_timeout_s,
                       protected=protected)  # fmt: skip
    finally:
        shutil.rmtree(out, ignore_errors=True)
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)


def smoke_reason(res: SandboxResult, metric: str) -> str | None:
    """Why the smoke run rejects the change, or None. The log tail is fenced as data."""
    why = None
    if res.violations:
        why = "; ".join(res.violations)
    elif res.returncode != 0:
        why = f"exited {res.returncode}"
    elif parse_number(res.summary.get(metric)) is None:
        why = f"no finite {metric} in a final --- summary block"
    if why is None:
        return None
    return f"smoke run failed: {why}\n{fence(res.tail, 'smoke log tail', 800)}"
