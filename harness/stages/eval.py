"""Eval: score pi_k (or pi_ref) on X-AlpacaEval with the configured judge (see harness.evaluate)."""

from __future__ import annotations

from harness.evaluate import evaluate_model
from harness.paths import REF
from harness.judges import make_judge
from harness.stages import StageContext


def run(ctx: StageContext) -> dict:
    cfg = ctx.cfg
    label = "pi_ref" if ctx.iteration == REF else f"pi_{ctx.iteration}"
    judge = make_judge(cfg)
    summary = evaluate_model(ctx.policy, label, ctx.out, cfg, ctx.layout.judge_cache(judge.id))
    avg = summary["average"]
    return {"model": label, "languages": summary["languages"], "win_rate": avg["win_rate"],
            "length_controlled_winrate": avg["length_controlled_winrate"], "on_target_rate": avg["on_target_rate"],
            "judge_calls": summary["judge_calls"]}
