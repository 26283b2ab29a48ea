"""The small error hierarchy. Converted to CLI messages and exit codes only in org/cli.py.

memory, the library below org, raises its own errors (memory/errors.py); `exit_code` is where
they get the codes of their org counterparts.
"""

from __future__ import annotations

from pathlib import Path

from memory.errors import NotesError, SpecError


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


class SpendCapReached(NightlabError):
    """A spend cap would be passed by the next model call: the campaign stops before making it."""

    exit_code = 0  # a stop the user asked for, not a failure


class HarnessError(NightlabError):
    """Something in nightlab itself or its workspace broke (git, store, filesystem)."""

    exit_code = 1


# what the CLI turns into one line on stderr and an exit code
EDGE_ERRORS = (NightlabError, NotesError)


def exit_code(error: NightlabError | NotesError) -> int:
    """The CLI exit code: a memory SpecError is bad input (as InputError), any other memory
    error is a broken store or model file (as HarnessError)."""
    if isinstance(error, NightlabError):
        return error.exit_code
    return InputError.exit_code if isinstance(error, SpecError) else HarnessError.exit_code
