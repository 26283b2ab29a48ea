"""Compare research orgs on one program under equal budgets: `nightlab compare`.

Every arm (an org folder) runs the same program from the same base commit with the same number
of experiments, in replicate campaigns, each with a memory of its own: no arm inherits another's
notes or duplicate blocks, and no replicate its sibling's. Keeps are the honest judge's
(org/noise.py), as in any campaign. The campaigns are ordinary ones (tags `<name>-<arm>-r<i>`,
`nightlab status` lists them), run one after another, replicate by replicate, so a comparison cut
short is still balanced; running the same command again resumes it.

A comparison lives in `$NIGHTLAB_HOME/compares/<name>/`:
    compare.json      the plan: program, arms, experiments, replicates, the base commit
    memory/<tag>/     each campaign's own memory
    report.md         one row per arm (rewritten after every campaign)
    running_best.png  running best vs experiment per arm: the mean over replicates, min..max band

Replicates differ in what the proposers draw: a sampler's seed comes from its campaign's tag and a
language model samples afresh; the training seeds (and so the baseline's runs) are the same in
every campaign, as the program sets them.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from org.errors import InputError
from org.ledger import Ledger
from org.settings import home_dir

REPORT, PLOT, PLAN = "report.md", "running_best.png", "compare.json"


class ComparePlan(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    program: str
    orgs: list[str]  # org folders, resolved
    experiments: int = Field(ge=1)
    replicates: int = Field(ge=1)
    base_commit: str
    created_at: float


def compares_dir() -> Path:
    return home_dir() / "compares"


def arm_names(orgs: list[str]) -> list[str]:
    """An arm is named by its org folder (roles/tpe -> tpe); two arms may not share a name."""
    names = [Path(o).name for o in orgs]
    if dupes := sorted({n for n in names if names.count(n) > 1}):
        raise InputError(None, "orgs", f"two arms named {dupes[0]!r}: org folders must have distinct names")
    if len(names) < 1:
        raise InputError(None, "orgs", "name at least one org folder")
    return names


def campaign_tag(name: str, arm: str, replicate: int) -> str:
    return f"{name}-{arm}-r{replicate + 1}"


def check_same(stored: BaseModel, asked: dict[str, Any], path: Path, what: str) -> None:
    """A resumed run (a comparison, a meta run) must be asked for with the settings it began with."""
    for key, value in asked.items():
        if getattr(stored, key) != value:
            raise InputError(path, key, f"{what} was started with {getattr(stored, key)!r}, not {value!r}; "
                             "use another --name")  # fmt: skip


def _plan(name: str, program: str | Path, orgs: list[str], experiments: int, replicates: int) -> ComparePlan:
    """The comparison's plan: made now, or the stored one, which the arguments must match."""
    from org import campaign as c
    from org.workspace import git

    prog, _ = c.validate_inputs(program, orgs[0])
    for org in orgs[1:]:
        c.validate_inputs(program, org)  # every org checked before anything runs
    path = compares_dir() / name / PLAN
    asked = dict(program=str(Path(program).resolve()), orgs=[str(Path(o).resolve()) for o in orgs],
                 experiments=experiments, replicates=replicates)  # fmt: skip
    if path.is_file():
        plan = ComparePlan.model_validate_json(path.read_text())
        check_same(plan, asked, path, f"comparison {name!r}")
        return plan
    plan = ComparePlan(name=name, base_commit=git(prog.repo, "rev-parse", "HEAD"), created_at=time.time(), **asked)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(plan.model_dump_json(indent=2))
    return plan


def run_compare(name: str, program: str | Path, orgs: list[str], experiments: int, replicates: int,
                models: Any = None, progress: Any = None) -> Path:  # fmt: skip
    """Run (or resume) every campaign of the comparison; returns the report's path."""
    from org import campaign as c
    from org.workspace import git

    c.check_tag(name, "name")
    arms = arm_names(orgs)
    plan = _plan(name, program, orgs, experiments, replicates)
    directory = compares_dir() / name
    for r in range(plan.replicates):
        for arm, org in zip(arms, plan.orgs, strict=True):
            tag = campaign_tag(name, arm, r)
            if (c.campaign_dir(tag) / "campaign.json").exists():
                if _done(tag) < plan.experiments:
                    c.resume(tag, max_experiments=plan.experiments, models=models, progress=progress)
            else:
                repo = c.validate_inputs(plan.program, org)[0].repo
                if (head := git(repo, "rev-parse", "HEAD")) != plan.base_commit:
                    raise InputError(repo, "HEAD", f"the repo moved from {plan.base_commit[:7]} to {head[:7]} since "
                                     f"comparison {name!r} began: every arm starts from the same commit")  # fmt: skip
                c.start(plan.program, org, tag=tag, max_experiments=plan.experiments, models=models,
                        progress=progress, memory_home=directory / "memory" / tag)  # fmt: skip
            write_report(name)
    return write_report(name)


def _done(tag: str) -> int:
    from org import campaign as c

    ledger = Ledger(c.campaign_dir(tag) / "ledger.db")
    try:
        return max(0, len(ledger.experiments()) - 1)
    finally:
        ledger.close()


def campaign_stats(tag: str, direction: str) -> dict[str, Any]:
    """One campaign's numbers for the table, from its ledger and record."""
    from org import campaign as c

    record = c.load_record(tag)
    ledger = Ledger(c.campaign_dir(tag) / "ledger.db")
    try:
        rows, (usd, frontier) = ledger.experiments(), ledger.spend()
        failures = ledger.failures()
        runs = ledger.run_count()
    finally:
        ledger.close()
    if not rows or rows[0]["metric"] is None:
        return {"tag": tag, "experiments": 0}
    base = rows[0]
    running, best = [], base
    for row in rows:
        if row["status"] == "keep":
            best = row
        running.append(best["metric"] - base["metric"])
    test = (best.get("test_metric") - base["test_metric"]
            if best.get("test_metric") is not None and base.get("test_metric") is not None else None)  # fmt: skip
    return {
        "tag": tag, "experiments": len(rows) - 1, "best_delta": best["metric"] - base["metric"],
        "test_delta": test, "keeps": sum(r["status"] == "keep" for r in rows[1:]),
        "crashes": sum(r["status"] == "crash" for r in rows[1:]),
        "rejects": sum(r["status"] == "rejected" for r in rows[1:]) + len(failures), "runs": runs,
        "wall_s": max(r["created_at"] for r in rows) - record.created_at,
        "usd": usd, "frontier_tokens": frontier,
        "running": running, "direction": direction,
    }  # fmt: skip


def _mean_sd(values: list[float], digits: str = "+.4f") -> str:
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:{digits}}"
    return f"{statistics.fmean(values):{digits}} ± {statistics.stdev(values):.4f}"


def arm_table(plan: ComparePlan) -> tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    """Per arm: the aggregated row, and each finished campaign's stats."""
    from org import campaign as c
    from org.program import load_program

    direction = load_program(plan.program).spec.direction
    per_arm: dict[str, list[dict[str, Any]]] = {}
    for arm in arm_names(plan.orgs):
        tags = [campaign_tag(plan.name, arm, r) for r in range(plan.replicates)]
        stats = [campaign_stats(t, direction) for t in tags if (c.campaign_dir(t) / "campaign.json").exists()]
        per_arm[arm] = [s for s in stats if s.get("experiments")]
    rows = []
    first = next(iter(per_arm.values()), [])
    for arm, stats in per_arm.items():
        deltas = [s["best_delta"] for s in stats]
        tests = [s["test_delta"] for s in stats if s["test_delta"] is not None]
        rows.append({
            "arm": arm, "campaigns": len(stats), "best_delta": _mean_sd(deltas), "test_delta": _mean_sd(tests),
            "keeps": _mean_sd([s["keeps"] for s in stats], ".1f"),
            "crashes": sum(s["crashes"] for s in stats), "rejects": sum(s["rejects"] for s in stats),
            "runs": sum(s["runs"] for s in stats),
            "wall_min": f"{sum(s['wall_s'] for s in stats) / 60:.1f}",
            "usd": f"{sum(s['usd'] for s in stats):.4f}",
            "frontier_tokens": sum(s["frontier_tokens"] for s in stats),
            "vs_first": _welch([s["best_delta"] for s in first], deltas, direction) if stats is not first else "—",
        })  # fmt: skip
    return rows, per_arm


def _welch(reference: list[float], arm: list[float], direction: str) -> str:
    """P(this arm's best delta is no better than the first arm's): a one-sided Welch t test over
    the replicates; needs two per arm."""
    if len(reference) < 2 or len(arm) < 2:
        return "n/a (< 2 replicates)"
    from scipy.stats import ttest_ind

    if statistics.pstdev(reference) == 0 and statistics.pstdev(arm) == 0:
        return "identical" if reference == arm else "no spread"
    better = "less" if direction == "min" else "greater"
    return f"p {ttest_ind(arm, reference, equal_var=False, alternative=better).pvalue:.3f}"


def write_report(name: str) -> Path:
    """report.md and running_best.png for comparison `name`; returns report.md's path."""
    directory = compares_dir() / name
    path = directory / PLAN
    if not path.is_file():
        raise InputError(None, "name", f"no comparison named {name!r} in {compares_dir()}")
    plan = ComparePlan.model_validate_json(path.read_text())
    rows, per_arm = arm_table(plan)
    from org.program import load_program

    spec = load_program(plan.program).spec
    better = "lower" if spec.direction == "min" else "higher"
    lines = [
        f"# Comparison {plan.name}",
        "",
        f"Program `{plan.program}`, from commit {plan.base_commit[:7]}; {plan.experiments} experiments per "
        f"campaign, {plan.replicates} replicate campaigns per arm. Δ is the final best {spec.metric} minus the "
        f"campaign's own baseline ({better} is better), mean ± sd over replicates; test Δ the same on the "
        "held-out test split; keeps are confirmed keeps per campaign; p is a one-sided Welch test of the "
        "arm's best Δ against the first arm's.",
        "",
        f"| arm | campaigns | best Δ {spec.metric} | test Δ | keeps | crashes | rejects | runs | wall min | USD | "
        "frontier tokens | vs first arm |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in rows:
        lines.append(f"| {r['arm']} | {r['campaigns']}/{plan.replicates} | {r['best_delta']} | {r['test_delta']} | "
                     f"{r['keeps']} | {r['crashes']} | {r['rejects']} | {r['runs']} | {r['wall_min']} | {r['usd']} | "
                     f"{r['frontier_tokens']} | {r['vs_first']} |")  # fmt: skip
    lines += ["", f"![running best]({PLOT})", "", "Campaigns: " + ", ".join(
        f"`{s['tag']}`" for stats in per_arm.values() for s in stats)]  # fmt: skip
    _plot(per_arm, plan, spec.metric, directory / PLOT)
    report = directory / REPORT
    report.write_text("\n".join(lines) + "\n", encoding="utf-8")
    (directory / "report.json").write_text(json.dumps(rows, indent=2))
    return report


def _plot(per_arm: dict[str, list[dict[str, Any]]], plan: ComparePlan, metric: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    for arm, stats in per_arm.items():
        curves = [s["running"] for s in stats if s["running"]]
        if not curves:
            continue
        n = min(len(c) for c in curves)
        data = np.array([c[:n] for c in curves])
        x = np.arange(n)
        (line,) = ax.step(x, data.mean(axis=0), where="post", label=f"{arm} ({len(curves)})")
        if len(curves) > 1:
            ax.fill_between(x, data.min(axis=0), data.max(axis=0), step="post", alpha=0.2, color=line.get_color())
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("experiment")
    ax.set_ylabel(f"running best {metric} − baseline")
    ax.set_title(f"{plan.name}: mean over replicates, min–max band")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
