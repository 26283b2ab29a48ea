"""CLI verbs for campaigns: `campaign`, `resume`, `status`, `log` (registered lazily in org/cli.py)."""

from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table


@click.command("campaign")
@click.option("--program", "program", required=True, type=click.Path(dir_okay=False),
              help="Program file (target contract + strategy), e.g. programs/quickstart.md.")
@click.option("--org", "org", default="roles/tiered", show_default=True, type=click.Path(),
              help="Org folder (org.md + role files).")
@click.option("--tag", default=None, help="Campaign name; default <program>-<date>-<time>.")
@click.option("--max-experiments", type=int, default=None,
              help="Stop after this many experiments (overrides the program's stop limit).")
@click.option("--unsandboxed", is_flag=True, default=False,
              help="Run without bubblewrap (process isolation only; every run records it). Edit-mode "
                   "orgs refuse to start without bubblewrap unless given this.")
def campaign(program: str, org: str, tag: str | None, max_experiments: int | None, unsandboxed: bool) -> None:
    """Start a campaign: baseline first, then propose -> vet -> run -> keep/revert, all night."""
    from org import campaign as c
    from org.progress import Dashboard

    prog, org_ = c.validate_inputs(program, org)  # fail fast, before any output
    if not c.sandboxing(org_, unsandboxed):  # InputError for edit mode without bubblewrap
        from org import bwrap

        click.echo(f"warning: runs are not sandboxed: {bwrap.unavailable() or '--unsandboxed'}", err=True)
    c.preflight(org_)
    tag = tag or c.default_tag(prog)
    click.echo(f"campaign {tag}: {c.campaign_dir(tag)}", err=True)
    with Dashboard(tag, prog.spec.metric) as dash:
        state = c.start(program, org, tag=tag, max_experiments=max_experiments, progress=dash,
                        unsandboxed=unsandboxed)
    _done(state)


@click.command("resume")
@click.argument("tag")
@click.option("--max-experiments", type=int, default=None,
              help="Raise (or set) the experiment limit before continuing.")
def resume(tag: str, max_experiments: int | None) -> None:
    """Continue a campaign from its last checkpoint (after a crash, kill -9 or reboot)."""
    from org import campaign as c
    from org.progress import Dashboard

    record = c.load_record(tag)
    with Dashboard(tag, record.metric) as dash:
        state = c.resume(tag, max_experiments=max_experiments, progress=dash)
    _done(state)


def _done(state: dict) -> None:
    best = state.get("best_metric")
    click.echo(f"campaign stopped: {state.get('stopped') or 'finished'}; "
               f"{state.get('n', 1) - 1} experiments; best {best if best is not None else 'n/a'}")


@click.command("status")
@click.argument("tag", required=False)
def status(tag: str | None) -> None:
    """Summary of one campaign, or of all campaigns."""
    from org import campaign as c

    tags = [tag] if tag else c.list_tags()
    if not tags:
        click.echo("no campaigns yet")
        return
    table = Table("tag", "experiments", "kept", "noise", "crashed", "rejected", "baseline", "best",
                  "best test", "sigma (df)", "runs", "drift", "spend")  # fmt: skip
    flags: list[str] = []
    for t in tags:
        s = c.summary(t)
        fmt = lambda x: "n/a" if x is None else f"{x:.6f}"
        sigma = "n/a" if s["noise_sigma"] is None else f"{s['noise_sigma']:.4f} ({s['noise_df']})"
        table.add_row(t, str(s["experiments"]), str(s["kept"]), str(s["inconclusive"]), str(s["crashed"]),
                      str(s["rejected"]), fmt(s["baseline"]), fmt(s["best"]), fmt(s["best_test"]), sigma,
                      str(s["runs"]), f"{len(s['drift_flags'])}/{s['drift_checks']}", f"${s['spend_usd']:.4f}")  # fmt: skip
        flags += [f"{t}: keep {f['n']} ({f['description']}) improved val by {f['delta']:+.6f} but moved test by "
                  f"{f['test_delta']:+.6f}: the wrong way" for f in s["test_flags"]]  # fmt: skip
        flags += [f"{t}: drift after experiment {d['after']}: the best (experiment {d['exp']}) re-ran at "
                  f"{d['metric']:.6f} against its record {d['reference']:.6f} (sigma {d['sigma']:.4f}); "
                  "re-measured" for d in s["drift_flags"]]  # fmt: skip
        flags += [f"{t}: keep {n} has no held-out test score (see its test log)" for n in s["untested"]]
        flags += [f"{t}: the drift check after experiment {a} failed: the best's re-run gave no metric"
                  for a in s["drift_failed"]]  # fmt: skip
    Console().print(table)
    for flag in flags:
        click.echo(f"FLAG {flag}")
    if tag:
        problems = c.agreement_problems(tag)
        click.echo("records agree (git, results.tsv, ledger)" if not problems
                   else "records disagree:\n  " + "\n  ".join(problems))  # fmt: skip


@click.command("log")
@click.argument("tag")
@click.option("--events", is_flag=True, help="Show the JSON event log instead of results.tsv.")
@click.option("-n", "limit", type=int, default=50, show_default=True, help="Last N events.")
def log(tag: str, events: bool, limit: int) -> None:
    """Print a campaign's results.tsv (or its event log)."""
    import json

    from org import campaign as c

    c.load_record(tag)  # clear error for an unknown tag
    if events:
        for event in c.read_json_events(tag, limit):
            click.echo(json.dumps(event))
        return
    tsv = c.campaign_dir(tag) / "results.tsv"
    click.echo(tsv.read_text() if tsv.exists() else "no experiments recorded yet")
