"""CLI verbs for campaigns: `campaign`, `resume`, `status`, `compare`, `meta`, `log` (registered
lazily in org/cli.py)."""

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
@click.option("--json", "as_json", is_flag=True, help="One JSON object per campaign (a list), for scripts.")
def status(tag: str | None, as_json: bool) -> None:
    """Summary of one campaign, or of all campaigns."""
    import json

    from org import campaign as c

    tags = [tag] if tag else c.list_tags()
    if as_json:
        click.echo(json.dumps([{**c.summary(t), **({"agreement_problems": c.agreement_problems(t)} if tag else {})}
                               for t in tags], indent=2))  # fmt: skip
        return
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


@click.command("compare")
@click.argument("orgs", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--program", "program", required=True, type=click.Path(dir_okay=False), help="Program file.")
@click.option("--experiments", type=click.IntRange(min=1), default=10, show_default=True,
              help="Experiments per campaign: every arm's budget.")
@click.option("--replicates", type=click.IntRange(min=1), default=3, show_default=True,
              help="Campaigns per arm, each with its own memory.")
@click.option("--name", default=None, help="The comparison's name; default <program>-compare. Run the same "
              "command again to resume it.")
def compare(orgs: tuple[str, ...], program: str, experiments: int, replicates: int, name: str | None) -> None:
    """Run every org (ORGS: folders, e.g. roles/tiered roles/tpe) on PROGRAM under equal budgets;
    writes report.md and running_best.png in $NIGHTLAB_HOME/compares/<name>/."""
    from org import campaign as c
    from org import compare as cmp
    from org.progress import Dashboard

    prog, _ = c.validate_inputs(program, orgs[0])
    name = c.check_tag(name or f"{prog.spec.name}-compare", "name")
    for org in orgs:
        c.preflight(c.validate_inputs(program, org)[1])
    click.echo(f"comparison {name}: {cmp.compares_dir() / name}", err=True)
    with Dashboard(name, prog.spec.metric) as dash:
        report = cmp.run_compare(name, program, list(orgs), experiments, replicates, progress=dash)
    click.echo(report.read_text())
    click.echo(f"report: {report}")


@click.command("meta")
@click.option("--program", "program", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Program whose strategy (its markdown body) is optimised; its front matter never changes.")
@click.option("--org", "org", default="roles/tiered", show_default=True, type=click.Path(exists=True),
              help="The org every scoring campaign runs.")
@click.option("--rounds", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--variants", type=click.IntRange(min=1), default=2, show_default=True, help="New strategies per round.")
@click.option("--experiments", type=click.IntRange(min=1), default=10, show_default=True,
              help="Experiments per scoring campaign.")
@click.option("--replicates", type=click.IntRange(min=1), default=2, show_default=True,
              help="Scoring campaigns per strategy.")
@click.option("--name", default=None, help="The run's name; default <program>-meta. The same command resumes it.")
def meta(program: str, org: str, rounds: int, variants: int, experiments: int, replicates: int,
         name: str | None) -> None:  # fmt: skip
    """Meta-optimise PROGRAM's strategy: the director writes variants, short comparisons score them,
    the best survives each round; the winner is written beside the program as <program>.<name>.md."""
    from org import campaign as c
    from org import meta as m

    prog, org_ = c.validate_inputs(program, org)
    c.preflight(org_)
    name = c.check_tag(name or f"{prog.spec.name}-meta", "name")
    click.echo(f"meta {name}: {m.meta_dir(name)}", err=True)
    record = m.run_meta(name, program, org, rounds, variants, experiments, replicates)
    for v in record.tried:
        score = "n/a" if v.score is None else f"{v.score:+.4f} ± {v.sd or 0:.4f} ({v.campaigns})"
        click.echo(f"round {v.round} variant {v.index}: {score}  {v.rationale}")
    click.echo(f"winner: round {record.tried[record.incumbent].round} variant "
               f"{record.tried[record.incumbent].index} -> {record.winner_file}")  # fmt: skip


@click.command("nightly")
@click.option("--program", "program", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--org", "org", default="roles/tiered", show_default=True, type=click.Path(exists=True))
@click.option("--until", "until", default="07:00", show_default=True,
              help="Local time the window closes (HH:MM): no experiment starts that could end after it.")
@click.option("--tag", default=None, help="Campaign to start or resume; default <program>-nightly.")
def nightly(program: str, org: str, until: str, tag: str | None) -> None:
    """Start or resume the program's nightly campaign until the window closes, then write the
    morning report (report.md, report.html) in its directory."""
    from org import campaign as c
    from org import nightly as n
    from org import report as r
    from org.progress import Dashboard

    end = n.deadline(until)
    prog, org_ = c.validate_inputs(program, org)
    c.preflight(org_)
    with Dashboard(tag or f"{prog.spec.name}-nightly", prog.spec.metric) as dash:
        tag, state = n.run_nightly(program, org, end, tag=tag, progress=dash)
    if state is None:
        click.echo(f"nightly {tag}: the window closes at {until}, too soon for a baseline "
                   f"(up to {n.baseline_worst_s(prog) / 60:.0f} min); nothing started")  # fmt: skip
        return
    _done(state)
    md, html = r.write(tag)
    click.echo(f"report: {md}\n        {html}")


@click.command("report")
@click.argument("tag")
@click.option("--json", "as_json", is_flag=True, help="Print the report's content as JSON instead.")
def report(tag: str, as_json: bool) -> None:
    """Write report.md, report.html (self-contained) and progress.png for campaign TAG."""
    import json

    from org import campaign as c
    from org import report as r

    c.load_record(tag)  # clear error for an unknown tag
    if as_json:
        click.echo(json.dumps(r.data(tag), indent=2))
        return
    md, html = r.write(tag)
    click.echo(md.read_text())
    click.echo(f"report: {md}\n        {html}")


@click.group("export")
def export() -> None:
    """Export a campaign to a tracking tool."""


@export.command("mlflow")
@click.argument("tag")
@click.option("--tracking-uri", default=None, help="MLflow tracking URI; default sqlite:///<campaign dir>/mlflow.db.")
def export_mlflow(tag: str, tracking_uri: str | None) -> None:
    """Every experiment of campaign TAG as an MLflow run (knobs as params; metrics; status, role,
    model and commit as tags). Again later: only what is new."""
    from org.export import export_mlflow as run_export

    uri, added = run_export(tag, tracking_uri)
    click.echo(f"exported {added} experiments of {tag} to {uri} (mlflow ui --backend-store-uri {uri})")


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
