"""The user's mistakes, as one family of exceptions.

Code that judges a user's input (a config key, a file, a folder, a checkpoint, an output path)
raises one of these with a message naming the key or file, what was expected and what was
found. :func:`util.cli.run_main` and :func:`util.runs.run_cli` print such an error as one
line and exit with status 2; anything else is a bug and keeps its traceback (exit status 1).

Each class also derives from the built-in exception it refines, so ``except ValueError`` and
``pytest.raises(FileNotFoundError)`` keep working.
"""
from __future__ import annotations


class UserError(Exception):
    """Marker of every expected error: the user can fix it from the message alone."""


class InputError(UserError, ValueError):
    """A value, file content, config key or argument that is not what was expected."""


class MissingInput(UserError, FileNotFoundError):
    """A file or folder the user named (or the command needs) is not there."""


class NoPermission(UserError, PermissionError):
    """A folder the command must write in is not writable."""


class PathInTheWay(UserError, FileExistsError):
    """A file stands where a folder is needed (or the reverse)."""


class UnknownName(UserError, KeyError):
    """A name (dataset, class, key) that is not among the known ones."""

    def __str__(self) -> str:  # KeyError's repr quotes are not part of the message
        return str(self.args[0]) if self.args else ""


class NonFiniteLoss(UserError, FloatingPointError):
    """Training met a NaN/inf loss; the episode is saved and named in the message."""
