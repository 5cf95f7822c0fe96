"""One error type for bad input or configuration, rendered as a single line."""

from __future__ import annotations

from pathlib import Path

EXIT_BAD_INPUT = 2


class HarnessError(Exception):
    """Bad input or configuration. ``str()`` is one line: ``path:row: message``."""

    def __init__(self, message: str, path: str | Path | None = None, row: int | None = None,
                 key: str | None = None):
        self.message = message
        self.path = str(path) if path is not None else None
        self.row = row
        self.key = key  # the config key at fault (dotted), so a command-line override can be named instead
        super().__init__(self.render())

    def render(self) -> str:
        where = ""
        if self.path is not None:
            where = self.path + (f":{self.row}" if self.row is not None else "") + ": "
        return (where + self.message).replace("\n", " ")
