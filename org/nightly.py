"""One night of a program's campaign: `nightlab nightly --until 07:00`.

Starts the program's nightly campaign (tag `<program>-nightly` unless given) or resumes it, with
the window's end as a stop limit: no experiment starts unless the most it could take (all its
runs and its keep test, or the longest experiment so far: `Lab.worst_next_s`) ends before the
window closes, so the night stops cleanly between experiments and the next night resumes. A new
campaign's baseline starts only if all its runs fit. The morning report is written either way.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from org.errors import InputError


def deadline(until: str, now: dt.datetime | None = None) -> float:
    """Epoch seconds of the next `HH:MM` (local time) after `now`: 07:00 at 23:00 is tomorrow's."""
    try:
        hour, minute = (int(x) for x in until.split(":"))
        target = dt.time(hour, minute)
    except ValueError:
        raise InputError(None, "until", f"{until!r}: write the window's end as HH:MM, e.g. 07:00") from None
    now = now or dt.datetime.now()
    end = dt.datetime.combine(now.date(), target)
    if end <= now:
        end += dt.timedelta(days=1)
    return end.timestamp()


def baseline_worst_s(program: Any) -> float:
    """The most a new campaign's baseline could take: every baseline run at the run timeout, and
    as much again for its held-out test."""
    spec = program.spec
    return spec.noise.baseline_runs * program.run_timeout_s * (2 if spec.test else 1)


def run_nightly(program_path: str, org_path: str, until: float, tag: str | None = None, models: Any = None,
                progress: Any = None, now: float | None = None) -> tuple[str, dict[str, Any] | None]:  # fmt: skip
    """Start or resume the nightly campaign with the window ending at `until`; the tag, and the
    final state (None when the window was too short to start a baseline)."""
    import time

    from org import campaign as c

    program, _ = c.validate_inputs(program_path, org_path)
    tag = c.check_tag(tag or f"{program.spec.name}-nightly")
    now = time.time() if now is None else now
    if (c.campaign_dir(tag) / "campaign.json").exists():
        return tag, c.resume(tag, models=models, progress=progress, until=until)
    if now + baseline_worst_s(program) > until:
        return tag, None
    return tag, c.start(program_path, org_path, tag=tag, models=models, progress=progress, until=until)
