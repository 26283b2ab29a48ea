"""A run's outcome: recorded in the ledger and the event log, and what the judge is told."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from org.runner import parse_number
from org.state import CampaignState, Outcome

if TYPE_CHECKING:
    from org.lab import Lab


def record_run(lab: Lab, state: CampaignState, r: int, seed: int | None, res: Any) -> Outcome:
    """Run `r` of the experiment in flight, in the ledger and the event log; its outcome."""
    n, prog = state["n"], lab.program
    metric = lab.metric_of(res)
    mem_mb = parse_number(res.summary.get(prog.spec.parse.memory_key)) or 0.0
    lab.ledger.record_run(n, r, dict(commit=state["commit"], seed=seed, metric=metric,
                                     seconds=res.seconds, returncode=res.returncode,
                                     timed_out=int(res.timed_out), log=str(res.log_path),
                                     summary=json.dumps(res.summary), cpu_seconds=res.cpu_seconds,
                                     isolation=res.network))  # fmt: skip
    lab.log.info("run_done", exp=n, replicate=r, seed=seed, returncode=res.returncode,
                 timed_out=res.timed_out, metric=metric, seconds=round(res.seconds, 2),
                 network=res.network, violations=res.violations)  # fmt: skip
    return Outcome(returncode=res.returncode, timed_out=res.timed_out, seconds=res.seconds,
                   metric=metric, memory_gb=mem_mb / 1024, status="", log=str(res.log_path),
                   tail=res.tail[-1500:], violations=res.violations, network=res.network)  # fmt: skip


def no_run(reason: str) -> Outcome:
    """The outcome of an experiment that could not run (the judge records it as a crash)."""
    return Outcome(returncode=None, timed_out=False, seconds=0.0, metric=None, memory_gb=0.0, status="",
                   log="", tail=reason, violations=[], network="", reason=reason)  # fmt: skip
