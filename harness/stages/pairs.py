"""Pairs: per language, the length-controlled alpha search and one (chosen, rejected) pair per prompt.

Writes pairs.jsonl (lang, id, prompt, chosen, rejected, their rewards, adjusted scores and lengths), summary.json
(per language: alpha, length gap, counts, mean lengths, reward margins, upper bound) and alpha_trace.csv.
Prompts whose chosen and rejected responses coincide are kept and counted (``pairs.drop_degenerate`` drops them).
"""

from __future__ import annotations

import statistics

from harness.errors import HarnessError
from harness.io import atomic_write_json, atomic_write_jsonl, atomic_write_text, read_jsonl
from harness.pairs import select_pairs
from harness.registry import get
from harness.stages import StageContext


def _mean(xs: list[float]) -> float:
    return float(statistics.fmean(xs)) if xs else 0.0


def run(ctx: StageContext) -> dict:
    cfg, pc = ctx.cfg, ctx.cfg.pairs
    strategy = get("strategies", cfg.strategy)()
    src = ctx.upstream("reward") / "rewards.jsonl"
    rows = read_jsonl(src)
    pairs, summary, trace_lines = [], {}, ["lang,alpha,length_gap"]
    for lang in strategy.pair_languages(cfg.languages):
        lrows = [r for r in rows if r["lang"] == lang]
        if not lrows:
            raise HarnessError(f"no rewards for language '{lang}'", src)
        R = [[x["reward"] for x in r["responses"]] for r in lrows]
        if pc.length_unit == "chars":
            L = [[len(x["text"]) for x in r["responses"]] for r in lrows]
        else:
            L = [[x["n_tokens"] for x in r["responses"]] for r in lrows]
        try:
            sel = select_pairs(R, L, length_control=pc.length_control, step=pc.alpha_step, alpha_max=pc.alpha_max,
                               upper_bound=pc.upper_bound)
        except HarnessError as e:
            raise HarnessError(f"language '{lang}': {e.message}", src) from None
        trace_lines += [f"{lang},{a:.3f},{d:.6f}" for a, d in sel.trace]
        lang_pairs, degenerate = [], 0
        for i, r in enumerate(lrows):
            c, w = sel.chosen[i], sel.rejected[i]
            yc, yw = r["responses"][c], r["responses"][w]
            same = c == w or yc["text"] == yw["text"]
            degenerate += same
            if same and pc.drop_degenerate:
                continue
            lang_pairs.append({
                "lang": lang, "id": r["id"], "prompt": r["prompt"], "chosen": yc["text"], "rejected": yw["text"],
                "chosen_reward": yc["reward"], "rejected_reward": yw["reward"],
                "chosen_score": float(sel.adjusted[i, c]), "rejected_score": float(sel.adjusted[i, w]),
                "chosen_length": L[i][c], "rejected_length": L[i][w], "chosen_index": c, "rejected_index": w,
                "degenerate": same})
        pairs += lang_pairs
        summary[lang] = {
            "alpha": sel.alpha, "length_gap": sel.length_gap, "length_unit": pc.length_unit,
            "upper_bound": pc.upper_bound, "prompts": len(lrows), "pairs": len(lang_pairs),
            "degenerate": degenerate, "degenerate_dropped": degenerate if pc.drop_degenerate else 0,
            "all_above_upper_bound": sel.all_capped,
            "mean_chosen_length": _mean([p["chosen_length"] for p in lang_pairs]),
            "mean_rejected_length": _mean([p["rejected_length"] for p in lang_pairs]),
            "mean_reward_margin": _mean([p["chosen_reward"] - p["rejected_reward"] for p in lang_pairs]),
            "mean_score_margin": _mean([p["chosen_score"] - p["rejected_score"] for p in lang_pairs]),
            "mean_reward_all": _mean([x for row in R for x in row]),
        }
    if not pairs:
        raise HarnessError("no preference pairs were produced (all degenerate and dropped?)", src)
    atomic_write_jsonl(ctx.out / "pairs.jsonl", pairs)
    atomic_write_json(ctx.out / "summary.json", summary)
    atomic_write_text(ctx.out / "alpha_trace.csv", "\n".join(trace_lines) + "\n")
    return {"pairs": len(pairs), "degenerate": sum(s["degenerate"] for s in summary.values()),
            "alpha": {k: v["alpha"] for k, v in summary.items()}}
