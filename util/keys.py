"""A declared config key: its default, types, allowed values, meaning and roles.

``config_ssl_upload.KEYS`` declares every key of training.py and validation.py with
:class:`Key`; the checks, ``print_config`` and the role lists (architecture keys, keys a resumed
run must keep) are derived from there.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from util.errors import InputError

DERIVED = None
NONE = type(None)
UNSET = object()


@dataclass(frozen=True)
class Key:
    """One config key: default, accepted types, allowed values (None: any), what it does, and
    its roles. A default of ``DERIVED`` is computed from other keys unless given
    (:func:`dataloaders.config_rules.derive`)."""
    default: Any
    types: tuple[type, ...]
    choices: tuple | None = None
    doc: str = ""
    low: float | None = None  # the smallest value allowed (numbers)
    positive: bool = False    # strictly above ``low`` (for floats)
    arch: bool = False        # decides the architecture: a checkpoint's value wins
    resume: bool = False      # decides episodes, model or schedule: a resume must keep it
    before: Any = UNSET      # what checkpoints written before the key existed used

    def check(self, name: str, value: Any) -> None:
        """Raise naming the key, what it expects and what it got."""
        if value is None and self.default is DERIVED:
            return  # derived later
        ok = isinstance(value, self.types) and not (isinstance(value, bool)
                                                    and bool not in self.types)
        if float in self.types and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if not ok:
            names = " or ".join("None" if t is NONE else t.__name__ for t in self.types)
            raise InputError(f"config: {name} expects {names}, got {value!r} "
                             f"({type(value).__name__})")
        if self.choices is not None and value not in self.choices:
            raise InputError(f"config: {name} expects one of {list(self.choices)}, got "
                             f"{value!r}")
        if self.low is not None and isinstance(value, (int, float)) and (
                value < self.low or (self.positive and value <= self.low)):
            bound = f"> {self.low}" if self.positive else f">= {self.low}"
            raise InputError(f"config: {name} expects a value {bound}, got {value!r}")
