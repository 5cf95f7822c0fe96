"""Stages of one ICR iteration. Each stage is a function ``run(ctx) -> dict`` (counts for the completion record)
that reads only earlier stages' folders and writes only ``ctx.out`` (the stage's ``.partial`` folder).

Stage names are fixed: sample, reward, pairs, train (iteration 0 has only train: pi_0 by English DPO), and eval
(X-AlpacaEval scores of pi_ref, pi_0, ... when ``eval.enabled``).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from harness.config import RunConfig
from harness.models import ModelSpec
from harness.paths import RunLayout

STAGES = ("sample", "reward", "pairs", "train", "eval")


@dataclass
class StageContext:
    cfg: RunConfig  # with this iteration's overrides applied
    layout: RunLayout
    iteration: int
    stage: str
    out: Path  # write here only (the .partial folder)
    policy: ModelSpec  # pi_{k-1}: sampler and reward policy; the model trained at this iteration
    reference: ModelSpec  # reward reference (pi_ref, or pi_{k-2} with reward.reference=previous)
    stage_hash: str = ""
    extra: dict = field(default_factory=dict)

    def upstream(self, stage: str) -> Path:
        return self.layout.stage_dir(self.iteration, stage)


def stage_function(stage: str) -> Callable[[StageContext], dict[str, Any]]:
    mod = importlib.import_module(f"harness.stages.{stage}")
    return mod.run
