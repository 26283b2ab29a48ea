"""Smoke gate: the changed target runs a few seconds on CPU in the sandbox before a real run.

The harness (trainer/prepare.py) shortens the budget and the evaluation when NIGHTLAB_SMOKE=1;
train.py cannot set that itself (the static rules reject environment access). Catches import
errors, shape errors, NaNs (train.py prints FAIL and exits 1) and anything the sandbox rejects.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from org.measure import measure
from org.runner import parse_number
from org.sandbox import SandboxResult
from org.untrusted import fence

if TYPE_CHECKING:
    from org.program import Program

SMOKE_ENV = {"NIGHTLAB_SMOKE": "1", "NIGHTLAB_SMOKE_SECONDS": "2", "NIGHTLAB_PRESET": "cpu",
             "CUDA_VISIBLE_DEVICES": ""}  # fmt: skip


def smoke_run(program: Program, cwd: Path, log_path: Path, sandboxed: bool,
              protected: dict[str, str] | None = None) -> SandboxResult:  # fmt: skip
    """A few seconds of the target, evaluated as a full run is (org/measure.py)."""
    assert program.spec.smoke_timeout_s is not None
    out = log_path.with_suffix(".out")
    try:
        return measure(program, cwd, dict(SMOKE_ENV), log_path, out, sandboxed, program.spec.smoke_timeout_s,
                       protected=protected)  # fmt: skip
    finally:
        shutil.rmtree(out, ignore_errors=True)


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
