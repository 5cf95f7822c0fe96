"""Subprocess entry for one stage: ``python -m harness.stages RUN_DIR ITERATION STAGE``.

Used by ``accelerate launch`` for multi-GPU training (and available for running any stage in a fresh process so
that GPU memory goes back to the OS). The run's resolved config.yaml says everything else.
"""

from __future__ import annotations

import sys

from harness.errors import EXIT_BAD_INPUT, HarnessError


def main(argv: list[str] | None = None) -> int:
    from harness.pipeline import run_stage_in_process

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3:
        print("usage: python -m harness.stages RUN_DIR ITERATION STAGE", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        run_stage_in_process(args[0], int(args[1]), args[2])
    except HarnessError as e:
        print(f"harness: error: {e.render()}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


if __name__ == "__main__":
    sys.exit(main())
