"""The small error hierarchy. Converted to CLI messages and exit codes only in org/cli.py."""

from __future__ import annotations

from pathlib import Path


class NightlabError(Exception):
    """Base class. `exit_code` is what the CLI exits with."""

    exit_code = 1


class InputError(NightlabError):
    """Bad user input (program, role file, org, data, model string): names the file and field."""

    exit_code = 2

    def __init__(self, path: str | Path | None, field: str | None, message: str):
        self.path = str(path) if path is not None else None
        self.field = field
        self.message = message
        where = ": ".join(p for p in (self.path, self.field) if p)
        super().__init__(f"{where}: {message}" if where else message)


class ModelError(NightlabError):
    """A model could not be reached or answered unusably after bounded retries (harness side)."""

    exit_code = 3


class HarnessError(NightlabError):
    """Something in nightlab itself or its workspace broke (git, store, filesystem)."""

    exit_code = 1
