"""Typed options: one declaration of a value's type, default and admitted range, and the one
validator every layer uses (the config's numeric keys, model options, EMD solver options).

    Option(0.1, float, low=0, low_open=True).check(value, "meta.lr")   # -> float or OptionError
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Tuple

from .errors import OptionError


@dataclass(frozen=True)
class Option:
    """One option: its default, its type (``float``, ``int``, ``str``, ``bool`` or
    ``object`` for anything) and the values it admits (``low`` / ``high`` bounds, inclusive
    unless ``low_open`` / ``high_open``; ``choices`` for strings)."""
    default: Any
    kind: type = float
    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False
    high_open: bool = False
    choices: Tuple[Any, ...] = ()

    def expected(self) -> str:
        if self.choices:
            return "one of " + ", ".join(map(repr, self.choices))
        what = {float: "a finite number", int: "an integer", bool: "true or false",
                str: "a string"}.get(self.kind, "a value")
        bounds, fmt = [], "d" if self.kind is int else "g"
        if self.low is not None:
            bounds.append(f"{'>' if self.low_open else '>='} {self.low:{fmt}}")
        if self.high is not None:
            bounds.append(f"{'<' if self.high_open else '<='} {self.high:{fmt}}")
        return what + (" " + " and ".join(bounds) if bounds else "")

    def check(self, value: Any, key: str) -> Any:
        """``value`` converted to the option's type; OptionError naming ``key`` if it is not admitted."""
        def bad():
            return OptionError(key, f"expected {self.expected()}, got {value!r}")
        if self.kind is object or (value is None and self.default is None):
            return value
        if self.kind is bool:
            if not isinstance(value, bool):
                raise bad()
            return value
        if self.kind is str:
            if not isinstance(value, str) or (self.choices and value not in self.choices):
                raise bad()
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad()
        if self.kind is int:
            if isinstance(value, float) and not value.is_integer():
                raise bad()
            value = int(value)
        elif not math.isfinite(value):
            raise bad()
        else:
            value = float(value)
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            raise bad()
        if self.high is not None and (value > self.high or (self.high_open and value == self.high)):
            raise bad()
        return value
