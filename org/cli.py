"""The `nightlab` command line. Subcommands are imported lazily so `nightlab --help` stays fast."""

from __future__ import annotations

import importlib
import sys

import click

from org.errors import EDGE_ERRORS, exit_code

# name -> "module:attribute" of a click command or group; imported only when used.
COMMANDS: dict[str, str] = {
    "campaign": "org.commands:campaign",
    "resume": "org.commands:resume",
    "status": "org.commands:status",
    "compare": "org.commands:compare",
    "meta": "org.commands:meta",
    "report": "org.commands:report",
    "nightly": "org.commands:nightly",
    "export": "org.commands:export",
    "log": "org.commands:log",
    "models": "org.models.commands:models",
    "memory": "org.memory_commands:memory",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(COMMANDS))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in COMMANDS:
            module, attr = COMMANDS[name].split(":")
            return getattr(importlib.import_module(module), attr)
        return super().get_command(ctx, name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="nightlab")
def cli() -> None:
    """nightlab: an autonomous ML research org that works overnight."""


def main(argv: list[str] | None = None) -> None:
    """Console entry point: a nightlab (or memory) error becomes one clear line on stderr and
    its exit code."""
    try:
        cli.main(args=argv, prog_name="nightlab", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.exceptions.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except EDGE_ERRORS as e:
        click.echo(f"nightlab: error: {e}", err=True)
        sys.exit(exit_code(e))


if __name__ == "__main__":
    main()
