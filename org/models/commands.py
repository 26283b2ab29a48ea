"""`nightlab models ...`: preflight an org's models, pull Ollama models."""

from __future__ import annotations

from pathlib import Path

import click


@click.group("models")
def models() -> None:
    """Check and fetch the models an org uses."""


@models.command("check")
@click.option("--org", "org_path", required=True, type=click.Path(path_type=Path),
              help="Org folder, e.g. roles/tiered.")
@click.option("--strict", is_flag=True, help="Fail on any problem, even when a fallback works.")
def check(org_path: Path, strict: bool) -> None:
    """Preflight every role of an org: reachability, keys, structured-output support."""
    from rich.console import Console
    from rich.table import Table

    from org.models.preflight import check_org, first_blocking_problem
    from org.roles import load_org

    org = load_org(org_path)
    checks = check_org(org)
    table = Table(title=f"models for org {org.spec.name!r}")
    for col in ("role", "file", "field", "model", "status", "detail", "structured"):
        table.add_column(col, overflow="fold")
    usable = {c.path for c in checks if c.ok}
    for c in checks:
        # a failed model whose role still has a working one is a warning: the fallback answers
        status = "[green]ok[/]" if c.ok else "[yellow]fallback[/]" if c.path in usable else "[red]FAIL[/]"
        table.add_row(c.kind, c.path.name, c.field, c.model, status, c.detail, c.structured)
    Console().print(table)
    problem = first_blocking_problem(checks, strict=strict)
    if problem:
        raise problem  # main() prints one line and exits 2


@models.command("pull")
@click.argument("model")
def pull_cmd(model: str) -> None:
    """Pull an Ollama model, e.g. `ollama_chat/qwen2.5-coder:7b`."""
    from org.models.preflight import pull

    pull(model, echo=click.echo)
    click.echo(f"pulled {model}")
