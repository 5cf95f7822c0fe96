"""The only module that builds run paths.

runs/<run>/run.json, config.yaml, log.txt
runs/<run>/iter_0/train/            optional stage 0: pi_0 by English DPO of pi_ref
runs/<run>/iter_<k>/<stage>/        sample, reward, pairs, train (k >= 1); each holds _done.json, written last
runs/<run>/iter_<k>/<stage>.partial/ a stage in progress (resumed by a rerun with the same settings)
runs/<run>/iter_<k>/eval/<lang>/    X-AlpacaEval scores of pi_k (iter_ref/eval: pi_ref)
runs/<run>/_cache/judge/<judge>.jsonl annotation cache shared by the run's evaluations
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

RUNS_ENV = "HARNESS_RUNS"
REF = -1  # the "iteration" of pi_ref in evaluation stages
DONE = "_done.json"
PARTIAL = "_partial.json"


def runs_root(cli_value: str | None = None) -> Path:
    return Path(cli_value or os.environ.get(RUNS_ENV) or "runs").expanduser()


@dataclass(frozen=True)
class RunLayout:
    root: Path

    @property
    def run_json(self) -> Path:
        return self.root / "run.json"

    @property
    def config_yaml(self) -> Path:
        return self.root / "config.yaml"

    @property
    def log(self) -> Path:
        return self.root / "log.txt"

    def iter_dir(self, k: int) -> Path:
        return self.root / ("iter_ref" if k == REF else f"iter_{k}")

    def judge_cache(self, judge_id: str) -> Path:
        return self.root / "_cache" / "judge" / f"{judge_id}.jsonl"

    def stage_dir(self, k: int, stage: str) -> Path:
        return self.iter_dir(k) / stage

    def partial_dir(self, k: int, stage: str) -> Path:
        return self.iter_dir(k) / f"{stage}.partial"

    def done_path(self, k: int, stage: str) -> Path:
        return self.stage_dir(k, stage) / DONE

    def model_dir(self, k: int) -> Path:
        """pi_k as trained by this run (k = 0: stage 0)."""
        return self.stage_dir(k, "train") / "model"
