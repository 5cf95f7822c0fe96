"""Where a stage's time goes: named phases timed exclusively while a stage runs, recorded in its ``_done.json``.

The pipeline opens a :class:`StageClock` around each stage; code that loads a model, writes files or does a
distinct piece of work wraps it in ``with phase("load")`` (or "write", "reference", ...). Phases nest: an inner phase
pauses the outer one, so the parts add up to the stage's wall time; whatever no phase claims is "compute". Outside a
stage (a library call, a test) ``phase`` costs nothing and records nothing.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

_clocks: list["StageClock"] = []


class StageClock:
    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.phases: dict[str, float] = {}
        self._stack: list[list] = []  # [name, started]

    def _add(self, name: str, seconds: float) -> None:
        self.phases[name] = self.phases.get(name, 0.0) + seconds

    def enter(self, name: str) -> None:
        now = time.perf_counter()
        if self._stack:  # pause the enclosing phase
            outer = self._stack[-1]
            self._add(outer[0], now - outer[1])
        self._stack.append([name, now])

    def leave(self) -> None:
        now = time.perf_counter()
        name, started = self._stack.pop()
        self._add(name, now - started)
        if self._stack:
            self._stack[-1][1] = now  # resume the enclosing phase

    def split(self) -> dict[str, float]:
        """Seconds per phase, "compute" for the rest; they sum to the wall time since the clock started."""
        total = time.perf_counter() - self.start
        out = {k: round(v, 2) for k, v in sorted(self.phases.items())}
        out["compute"] = round(max(0.0, total - sum(self.phases.values())) + out.get("compute", 0.0), 2)
        return out


@contextmanager
def stage_clock() -> Iterator[StageClock]:
    clock = StageClock()
    _clocks.append(clock)
    try:
        yield clock
    finally:
        _clocks.remove(clock)


@contextmanager
def phase(name: str) -> Iterator[None]:
    clock = _clocks[-1] if _clocks else None
    if clock is None:
        yield
        return
    clock.enter(name)
    try:
        yield
    finally:
        clock.leave()


def record(name: str, seconds: float) -> None:
    """Add ``seconds`` measured elsewhere (a launched process's phases) to phase ``name`` of the running stage's
    clock; they come out of its "compute". Outside a stage, nothing."""
    if _clocks:
        _clocks[-1]._add(name, seconds)


def fmt_split(split: dict[str, float]) -> str:
    """"load 3.1 · compute 80.2 · write 1.0" (phases that took under 0.05 s left out)."""
    order = ["launch", "load", "reference", "generate", "judge", "compute", "write"]
    keys = sorted(split, key=lambda k: (order.index(k) if k in order else len(order), k))
    return " · ".join(f"{k} {split[k]:.1f}" for k in keys if split[k] >= 0.05)
