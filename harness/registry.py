"""One registry for every plugin kind: models, languages, strategies, judges, backends.

Components register where they are defined::

    @register("strategies", "cross_lingual", "reward under the English instruction (ICR, default)")
    class CrossLingual(Strategy): ...

Built-ins live in the modules listed in ``BUILTIN_MODULES`` (all light to import: heavy libraries are imported
inside functions). Outside packages add components through the entry-point group ``harness.plugins``: each
entry point is a function ``register(registry)`` that calls ``registry.add(...)``. A plugin that fails to load is
recorded and shown by ``harness ls`` as broken; it only breaks a run that asks for one of its names.
"""

from __future__ import annotations

import difflib
import importlib
import logging
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Callable

from harness.errors import HarnessError

log = logging.getLogger(__name__)

KINDS = ("models", "languages", "strategies", "judges", "backends")
ENTRY_POINT_GROUP = "harness.plugins"
BUILTIN_MODULES = (
    "harness.languages",
    "harness.models",
    "harness.strategies",
    "harness.strategies.lidr",
    "harness.strategies.self_rewarding",
    "harness.backends",
    "harness.judges",
)


@dataclass
class Entry:
    kind: str
    name: str
    obj: Any
    description: str
    origin: str = "built-in"


class Registry:
    def __init__(self) -> None:
        self._entries: dict[str, dict[str, Entry]] = {k: {} for k in KINDS}
        self.broken_plugins: dict[str, str] = {}
        self._loaded = False

    # -- registration -------------------------------------------------------------------------------------------
    def add(self, kind: str, name: str, obj: Any, description: str = "", origin: str = "built-in",
            replace: bool = False) -> Any:
        kind = _check_kind(kind)
        if name in self._entries[kind] and not replace:
            prev = self._entries[kind][name]
            raise HarnessError(f"{kind} '{name}' is registered twice ({prev.origin} and {origin})")
        if not description:
            doc = (getattr(obj, "__doc__", None) or "").strip()
            description = doc.splitlines()[0] if doc else ""
        self._entries[kind][name] = Entry(kind, name, obj, description, origin)
        return obj

    def remove(self, kind: str, name: str) -> None:
        self._entries[_check_kind(kind)].pop(name, None)

    # -- lookup ---------------------------------------------------------------------------------------------------
    def load(self) -> "Registry":
        if self._loaded:
            return self
        self._loaded = True
        for mod in BUILTIN_MODULES:  # built-ins register into REGISTRY when their module is imported
            importlib.import_module(mod)
        if self is not REGISTRY:  # a fresh registry (tests) starts from the built-ins
            for kind in KINDS:
                for e in REGISTRY._entries[kind].values():
                    if e.origin == "built-in":
                        self._entries[kind].setdefault(e.name, e)
        self._load_entry_points()
        return self

    def _load_entry_points(self) -> None:
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = getattr(ep.dist, "name", None) or ep.value
            try:
                fn: Callable[[Registry], None] = ep.load()
                _PluginView(self, dist).run(fn)
            except Exception as e:  # a broken plugin must not break every command
                self.broken_plugins[f"{ep.name} ({dist})"] = f"{type(e).__name__}: {e}"
                log.warning("plugin %s from %s failed to load: %s", ep.name, dist, e)

    def names(self, kind: str) -> list[str]:
        self.load()
        return sorted(self._entries[_check_kind(kind)])

    def entries(self, kind: str) -> list[Entry]:
        self.load()
        return [self._entries[_check_kind(kind)][n] for n in self.names(kind)]

    def get(self, kind: str, name: str) -> Any:
        self.load()
        kind = _check_kind(kind)
        table = self._entries[kind]
        if name in table:
            return table[name].obj
        close = difflib.get_close_matches(str(name), list(table), n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        broken = f" (plugins that failed to load: {', '.join(self.broken_plugins)})" if self.broken_plugins else ""
        raise HarnessError(
            f"unknown {kind[:-1] if kind != 'strategies' else 'strategy'} '{name}'{hint} "
            f"available: {', '.join(sorted(table))}{broken}; see: harness ls {kind}")

    def __contains__(self, item: tuple[str, str]) -> bool:
        kind, name = item
        self.load()
        return name in self._entries[_check_kind(kind)]


class _PluginView:
    """What a plugin's ``register`` function receives: ``add`` records the plugin's distribution as origin."""

    def __init__(self, reg: Registry, origin: str):
        self._reg, self._origin = reg, origin

    def add(self, kind: str, name: str, obj: Any, description: str = "") -> Any:
        return self._reg.add(kind, name, obj, description, origin=self._origin)

    def run(self, fn: Callable) -> None:
        fn(self)


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        close = difflib.get_close_matches(kind, KINDS, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise HarnessError(f"unknown component kind '{kind}'{hint} kinds: {', '.join(KINDS)}")
    return kind


REGISTRY = Registry()


def register(kind: str, name: str, description: str = ""):
    """Decorator: register a class or function under ``kind``/``name``."""

    def deco(obj):
        REGISTRY.add(kind, name, obj, description)
        return obj

    return deco


def get(kind: str, name: str) -> Any:
    return REGISTRY.get(kind, name)
