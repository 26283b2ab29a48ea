"""`nightlab memory ...`: search, show, stats, reindex over the note store in NIGHTLAB_HOME
(registered lazily in org/cli.py; memory itself reads no settings, they are handed in here)."""

from __future__ import annotations

import json

import click

from memory.store import NoteStore
from org import settings


def _store(embedding: str) -> NoteStore:
    return NoteStore(settings.home_dir(), embedding=embedding, ollama_host=settings.ollama_host())


embedding_option = click.option(
    "--embedding",
    default="minilm",
    show_default=True,
    help="Embedding model of the index: 'minilm' or 'ollama:<model>[@url]'.",
)


@click.group()
def memory() -> None:
    """The atomic-note memory shared by campaigns (SQLite + Chroma under NIGHTLAB_HOME)."""


@memory.command()
@click.argument("text")
@click.option("-k", "--k", "k", default=10, show_default=True, help="How many notes.")
@click.option("--target", default=None, help="Only notes about this target.")
@click.option("--current", is_flag=True, help="Hide superseded and refuted notes.")
@embedding_option
def search(text: str, k: int, target: str | None, current: bool, embedding: str) -> None:
    """Notes most related to TEXT (meaning + exact words)."""
    for note in _store(embedding).search(text, k, target, current_only=current):
        click.echo(f"{note.created[:19]}  {note.campaign}  {note.to_prompt()}")


@memory.command()
@click.argument("campaign")
@click.option("--kind", default=None, help="Only this kind of note.")
@embedding_option
def show(campaign: str, kind: str | None, embedding: str) -> None:
    """Every note written by campaign CAMPAIGN (its tag), oldest first."""
    notes = _store(embedding).notes(campaign=campaign, kind=kind)
    if not notes:
        click.echo(f"no notes for campaign {campaign!r}", err=True)
    for note in notes:
        click.echo(f"{note.created[:19]}  {note.target}  {note.to_prompt()}")


@memory.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@embedding_option
def stats(as_json: bool, embedding: str) -> None:
    """Counts by kind, superseded/refuted notes, and whether the index matches SQLite."""
    store = _store(embedding)
    data = store.stats()
    data["in_sync"] = store.verify()
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    for key, value in data.items():
        click.echo(f"{key}: {value}")


@memory.command()
@embedding_option
def reindex(embedding: str) -> None:
    """Rebuild the Chroma index from SQLite (the source of truth)."""
    n = _store(embedding).reindex()
    click.echo(f"reindexed {n} notes")
