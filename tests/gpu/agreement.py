"""Rescore a reward stage's reference log-probs (pi_ref) in float32 on the CPU and print how far the
stage's own values (e.g. vLLM in bf16 on a GPU) are from them. Usage: python tests/gpu/agreement.py REWARDS.jsonl [N]"""

import statistics
import sys
from pathlib import Path

from harness.backends import TransformersBackend
from harness.config import load_config
from harness.io import read_jsonl
from harness.models import resolve_model
from harness.stages.reward import _sum


def main(path: str, n: int = 32) -> None:
    rows = read_jsonl(path)
    cfg, _ = load_config(Path(path).parents[2] / "config.yaml")  # the run's config: <run>/iter_k/reward/rewards.jsonl
    be = TransformersBackend(resolve_model(cfg.models.reference), dtype="float32", device="cpu")
    items = [(r["reward_instruction"], x) for r in rows for x in r["responses"]][:n]
    sums = [_sum(lp, cfg.reward.logprob_mode)[0]
            for lp in be.score([be.format_prompt(i) for i, _ in items], [x["text"] for _, x in items])]
    diffs = [abs(x["ref_logp"] - s) for (_, x), s in zip(items, sums)]
    tokens = [x["scored_tokens"] for _, x in items]
    print(f"{len(items)} responses ({min(tokens)}-{max(tokens)} scored tokens): reference log-prob, the stage's value "
          f"vs float32 on the CPU: max |diff| {max(diffs):.3f} nats, median {statistics.median(diffs):.3f} "
          f"(the stage rounds to {cfg.reward.round_decimals} decimals)")


if __name__ == "__main__":
    main(sys.argv[1], *(int(a) for a in sys.argv[2:3]))
