"""One generic registry for every kind of pluggable component.

The registry key is the public identity of a component: it equals the Hydra option name
(``conf/<group>/<key>.yaml``) and the leaderboard row label.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """Raised for a name that is not registered; the message lists the known names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._tags: dict[str, frozenset[str]] = {}

    def register(self, name: str, *, tags: tuple[str, ...] = ()) -> Callable[[T], T]:
        if not name.isidentifier():
            raise ValueError(f"{self.kind} name {name!r} must be a Python identifier")

        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"duplicate {self.kind} name {name!r}: already registered by {self._items[name]!r}")
            self._items[name] = obj
            self._tags[name] = frozenset(tags)
            try:
                setattr(obj, "registry_name", name)  # noqa: B010  (obj is a generic T to the type checker)
            except (AttributeError, TypeError):
                pass
            return obj

        return deco

    def get(self, name: str) -> T:
        if name not in self._items:
            raise UnknownNameError(self.unknown_message(name))
        return self._items[name]

    def unknown_message(self, name: Any) -> str:
        known = self.names()
        close = difflib.get_close_matches(str(name), known, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        return f"unknown {self.kind} {name!r}.{hint} Known {self.kind}s: {', '.join(known)}"

    def names(self, pattern: str | None = None, tag: str | None = None) -> list[str]:
        out = sorted(self._items)
        if pattern:
            out = [n for n in out if fnmatch.fnmatch(n, pattern)]
        if tag:
            out = [n for n in out if tag in self._tags[n]]
        return out

    def tags(self, name: str) -> frozenset[str]:
        self.get(name)
        return self._tags[name]

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __len__(self) -> int:
        return len(self._items)


METHODS: Registry[Any] = Registry("method")
BACKBONES: Registry[Any] = Registry("backbone")
DATASETS: Registry[Any] = Registry("dataset")
SUITES: Registry[Any] = Registry("suite")
PROTOCOLS: Registry[Any] = Registry("protocol")
# classification heads a protocol puts on an encoder: factory(backbone, n_out, extras) -> module(images) -> logits
HEADS: Registry[Any] = Registry("head")
