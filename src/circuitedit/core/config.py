"""What every config dataclass shares, in the manner of PEFT's configs: one line of help per
field (`dataclasses.field(metadata={"help": ...})`, read back by `field_help`, which the CLI's
flag help reuses) and checks run at construction that name the field that cannot work
(`section.field: problem`, a ValueError)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import MISSING, fields
from numbers import Integral, Real
from typing import NoReturn


def field_help(config_class: type, name: str, *, with_default: bool = False) -> str:
    """The one line of help of `config_class`'s field `name` (with its default, where it has a
    plain one other than None, as "(default X)")."""
    for item in fields(config_class):
        if item.name == name:
            default = item.default
            shown = with_default and default is not MISSING and default is not None
            return item.metadata["help"] + (f" (default {default})" if shown else "")
    raise KeyError(f"{config_class.__name__} has no field {name!r}")


class CheckedConfig:
    """Base of the config dataclasses: `validate()` runs at construction. Run it again after
    setting a field (the CLI's flags): a dataclass does not check assignments."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        raise NotImplementedError


class ConfigValueError(ValueError):
    """A config value that cannot work; the message is `section.name: problem`."""

    def __init__(self, section: str, name: str, problem: str):
        self.section, self.name, self.problem = section, name, problem
        super().__init__(f"{section}.{name}: {problem}")

    def within(self, section: str) -> ConfigValueError:
        """The same error about the same field of a config that sits at `section` (a nested
        config named by its place in its parent, e.g. a StageConfig as `editor.learn`)."""
        return ConfigValueError(section, self.name, self.problem)


def _is_number(value, integer: bool) -> bool:
    """A real number (an integral one where `integer`; never a bool, never NaN)."""
    if isinstance(value, bool) or not isinstance(value, Integral if integer else Real):
        return False
    return not math.isnan(value)


class FieldChecks:
    """Checks of one config's fields; the first that fails raises a ConfigValueError naming it."""

    def __init__(self, config, section: str):
        self.config, self.section = config, section

    def fail(self, name: str, problem: str) -> NoReturn:
        raise ConfigValueError(self.section, name, problem)

    def number(self, name: str, low: float | None = None, high: float | None = None, *, low_open: bool = False,
               high_open: bool = False, optional: bool = False, integer: bool = False) -> None:
        """`name` is a number (an integer where `integer`) within the bounds given (None where
        `optional`)."""
        value = getattr(self.config, name)
        if value is None and optional:
            return
        if not _is_number(value, integer):
            self.fail(name, f"expected {'an integer' if integer else 'a number'}, got {value!r}")
        below = low is not None and (value <= low if low_open else value < low)
        above = high is not None and (value >= high if high_open else value > high)
        if below or above:
            self.fail(name, f"must be {'null or ' if optional else ''}{_bounds(low, high, low_open, high_open)}, "
                            f"got {value}")

    def integer(self, name: str, low: int | None = None, *, optional: bool = False) -> None:
        self.number(name, low, optional=optional, integer=True)

    def choice(self, name: str, options: Sequence[str]) -> None:
        value = getattr(self.config, name)
        if value not in options:
            self.fail(name, f"expected {', '.join(options[:-1])} or {options[-1]}, got {value!r}")

    def text(self, name: str, *, optional: bool = False) -> None:
        value = getattr(self.config, name)
        if not (isinstance(value, str) or (value is None and optional)):
            self.fail(name, f"expected a string{' or null' if optional else ''}, got {value!r}")

    def flag(self, name: str) -> None:
        value = getattr(self.config, name)
        if not isinstance(value, bool):
            self.fail(name, f"expected true or false, got {value!r}")


def _bounds(low, high, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if high is not None:
        return f"{'below' if high_open else 'at most'} {high}"
    if low == 0:
        return "positive" if low_open else "at least 0"
    return f"{'above' if low_open else 'at least'} {low}"
