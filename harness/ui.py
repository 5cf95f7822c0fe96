"""Console output: rich progress bars for long loops and the end-of-command summary. Library code logs."""

from __future__ import annotations

import os
import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True, highlight=False)


def progress() -> Progress:
    """One bar per long loop; rendered live on a terminal, silent in CI and pipes."""
    disable = bool(os.environ.get("CI")) or not sys.stderr.isatty()
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=console, disable=disable, transient=False)
