"""A small name -> constructor registry, in the style of timm's ``create_model``.

Config values reach constructors only through ``Registry.create``, which checks
the keyword arguments against the constructor's signature so that a misspelt
option is an error instead of being silently ignored.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, Iterable, Optional

from .errors import ConfigError, FewShotError, OptionError


class Registry:
    """Maps names to callables (classes or factory functions)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: Dict[str, Callable[..., Any]] = {}

    def register(self, name: Optional[str] = None) -> Callable:
        def decorator(fn: Callable) -> Callable:
            key = name or fn.__name__
            if key in self._entries:
                raise KeyError(f"{self.kind} {key!r} is registered twice")
            self._entries[key] = fn
            return fn

        return decorator

    def names(self) -> list:
        return sorted(self._entries)

    def get(self, name: str) -> Callable[..., Any]:
        if name not in self._entries:
            raise ConfigError(
                f"unknown {self.kind} {name!r}; available: {', '.join(self.names())}")
        return self._entries[name]

    def create(self, name: str, where: str = "", **kwargs: Any) -> Any:
        """Build ``name`` with ``kwargs``; unknown keyword arguments are a ConfigError.

        ``where``: the key the options were read from (e.g. ``model.options``); an
        :class:`~fewshot.errors.OptionError` of the constructor, which names an option
        relative to its own arguments, is raised again under it."""
        fn = self.get(name)
        check_kwargs(fn, kwargs, where, f"{self.kind} {name!r}")
        try:
            return fn(**kwargs)
        except OptionError as e:
            raise e.under(where) from None
        except ValueError as e:          # a constructor's own check of an option's value
            if isinstance(e, FewShotError):  # already the project's error (ConfigError, DataError)
                raise
            raise OptionError(where, f"{e} ({self.kind} {name!r})") from None

    def __contains__(self, name: str) -> bool:
        return name in self._entries


def check_kwargs(fn: Callable, kwargs: Dict[str, Any], where: str, what: str = "",
                 reserved: Iterable[str] = ()) -> None:
    """Raise ConfigError (naming ``where``, the options' key, and ``what`` takes them) if
    ``kwargs`` holds a key that ``fn`` does not accept."""
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    accepted = [k for k, p in params.items()
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and k not in reserved]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        of = f" of {what}" if where and what else ""
        raise ConfigError(f"{where or what}: unknown option(s) {', '.join(map(repr, unknown))}{of}; "
                          f"accepted: {', '.join(accepted) or '(none)'}")
