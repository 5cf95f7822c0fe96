"""Self-rewarding: an LLM judge scores the sampled answers instead of the implicit reward.

After Self-Rewarding Language Models (Yuan et al. 2024, arXiv 2401.10020): the model itself rates each response
with the paper's LLM-as-a-Judge prompt (its Figure 2: an additive 5-point rubric, a short justification, then
"Score: <total points>"), each response judged ``judge_samples`` times (3, as the paper) with sampling, and the
parsed scores averaged. Per prompt, chosen = the highest mean score, rejected = the lowest (the first in sample
order on ties within a side); prompts whose responses all score the same, or with fewer than two scored responses,
are dropped and counted. No length control. The paper does not compare against this method; it is an alternative.

Stages: ``sample`` (as ICR), ``judge`` (judgements.jsonl and scores.jsonl), ``pairs``, ``train`` (``train.*``).
Options (``strategy_options``): ``judge`` (a registered model or local folder; default: the policy pi_{k-1} itself),
``judge_base_url`` (an OpenAI-compatible server, e.g. ``vllm serve``, that serves ``judge`` under that name: the
judgements are then its chat completions, seeded per response, through the ``openai_compat`` backend),
``judge_backend`` (the engine of a local judge; default ``backend.sample``: ``vllm`` is several times faster at
these long prompts on CPU), ``judge_samples`` (3), ``judge_max_tokens`` (256: room for the justification of up to 100 words and the score),
``judge_temperature`` (0.7) and ``judge_top_p`` (0.9).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from harness.errors import HarnessError
from harness.registry import register
from harness.strategies import CrossLingual, StagePlan

# The LLM-as-a-Judge prompt of Yuan et al. 2024 (Figure 2), with {prompt} and {response} filled in.
JUDGE_PROMPT = """Review the user's question and the corresponding response using the additive 5-point scoring \
system described below. Points are accumulated based on the satisfaction of each criterion:
- Add 1 point if the response is relevant and provides some information related to the user's inquiry, even if it \
is incomplete or contains some irrelevant content.
- Add another point if the response addresses a substantial portion of the user's question, but does not \
completely resolve the query or provide a direct answer.
- Award a third point if the response answers the basic elements of the user's question in a useful way, \
regardless of whether it seems to have been written by an AI Assistant or if it has elements typically found in \
blogs or search results.
- Grant a fourth point if the response is clearly written from an AI Assistant's perspective, addressing the \
user's question directly and comprehensively, and is well-organized and helpful, even if there is slight room for \
improvement in clarity, conciseness or focus.
- Bestow a fifth point for a response that is impeccably tailored to the user's question by an AI Assistant, \
without extraneous information, reflecting expert knowledge, and demonstrating a high-quality, engaging, and \
insightful answer.

User: {prompt}
<response>{response}</response>

After examining the user's instruction and the response:
- Briefly justify your total score, up to 100 words.
- Conclude with the score using the format: "Score: <total points>"
Remember to assess from the AI Assistant perspective, utilizing web search knowledge as necessary. To evaluate the \
response in alignment with this additive scoring model, we'll systematically attribute points based on the \
outlined criteria."""
_SCORE = re.compile(r"Score:\s*\**\s*([0-5](?:\.\d+)?)")


def parse_score(text: str) -> float | None:
    """The last "Score: N" (0..5) in a judgement, or None."""
    found = _SCORE.findall(text)
    return float(found[-1]) if found else None


@register("strategies", "self_rewarding",
          "alternative (Yuan et al. 2024): the model judges its answers (5-point prompt, 3 samples) instead of ICR")
@dataclass(frozen=True)
class SelfRewarding(CrossLingual):
    name: str = "self_rewarding"
    stages: tuple[str, ...] = ("sample", "judge", "pairs", "train")
    OPTIONS = {"judge": None, "judge_base_url": None, "judge_backend": None, "judge_samples": 3, "judge_max_tokens": 256,
               "judge_temperature": 0.7, "judge_top_p": 0.9}

    def check(self, cfg) -> None:
        super().check(cfg)
        o = self.options(cfg)
        for key, lo in (("judge_samples", 1), ("judge_max_tokens", 1)):
            if not isinstance(o[key], int) or isinstance(o[key], bool) or o[key] < lo:
                raise HarnessError(f"strategy_options.{key} must be a whole number >= {lo}; got {o[key]!r}",
                                   key=f"strategy_options.{key}")
        if not (isinstance(o["judge_temperature"], (int, float)) and o["judge_temperature"] >= 0):
            raise HarnessError(f"strategy_options.judge_temperature must be >= 0; got {o['judge_temperature']!r}",
                               key="strategy_options.judge_temperature")
        if o["judge_backend"] is not None and o["judge_base_url"] is not None:
            raise HarnessError("strategy_options.judge_backend is for a local judge; an endpoint judge "
                               "(judge_base_url) is served by its server", key="strategy_options.judge_backend")
        if o["judge_base_url"] is not None:
            if o["judge"] is None:
                raise HarnessError("strategy_options.judge_base_url needs strategy_options.judge: the model name the "
                                   "server serves", key="strategy_options.judge")
            from harness.backends import check_endpoint

            check_endpoint(str(o["judge_base_url"]), str(o["judge"]), option="strategy_options.judge_base_url")
        if o["judge_backend"] is not None:
            from harness.registry import get

            try:
                get("backends", str(o["judge_backend"]))
            except HarnessError as e:
                raise HarnessError(f"strategy_options.judge_backend: {e.message}",
                                   key="strategy_options.judge_backend") from None
        if o["judge_base_url"] is None and o["judge"] is not None:
            from harness.models import resolve_model

            resolve_model(str(o["judge"]), where="strategy_options.judge")

    def judge_model(self, cfg, policy):
        """(backend name, ModelSpec) of the judge: the policy, a registered model or folder, or a served model."""
        o = self.options(cfg)
        if o["judge_base_url"] is not None:
            from harness.models import ModelSpec

            return "openai_compat", ModelSpec(str(o["judge"]), "endpoint", str(o["judge_base_url"]).rstrip("/"),
                                              description="OpenAI-compatible endpoint")
        backend = o["judge_backend"] or cfg.backend.sample
        if o["judge"] is None:
            return backend, policy
        from harness.models import resolve_model

        return backend, resolve_model(str(o["judge"]), where="strategy_options.judge")

    def stage_settings(self, stage: str, plan: StagePlan) -> dict:
        if stage == "judge":
            o = self.options(plan.cfg)
            backend, spec = self.judge_model(plan.cfg, None)  # spec: None when the policy judges
            if spec is None:
                judge = plan.policy  # the policy's identity, as the other stages hash it
            else:
                judge = spec.identity() if spec.source != "endpoint" else {"endpoint": spec.path, "model": spec.name}
            return {**plan.previous(stage, self.stages), "judge": judge, "prompt": JUDGE_PROMPT,
                    **{k: v for k, v in o.items() if k not in ("judge", "judge_base_url", "judge_backend")},
                    "backend": backend,
                    "backend_options": plan.cfg.backend.options, "seed": plan.cfg.seed}
        if stage == "pairs":
            return {**plan.previous(stage, self.stages), "languages": self.pair_languages(plan.cfg.languages),
                    "rule": "highest vs lowest mean judge score, ties dropped"}
        return super().stage_settings(stage, plan)

    def describe(self, stage: str, cfg, n_prompts: int) -> str | None:
        if stage != "judge":
            return None
        o = self.options(cfg)
        n = n_prompts * len(self.sample_languages(cfg.languages)) * cfg.sample.n
        who = "the policy" if o["judge"] is None else f"{o['judge']}" + (" (endpoint)" if o["judge_base_url"] else "")
        return (f"{n} responses x {o['judge_samples']} judgements by {who}, <= {o['judge_max_tokens']} tokens each")

    def stage_function(self, stage: str):
        return {"judge": judge, "pairs": score_pairs}.get(stage) or super().stage_function(stage)


def judge(ctx) -> dict:
    """judgements.jsonl (resumable per chunk of prompts), then scores.jsonl: each response with its judgements,
    their parsed scores and their mean (``score``; None when no judgement gave a score)."""
    from harness.backends import derive_seed, load_backend
    from harness.io import JsonlAppender, atomic_write_jsonl, read_jsonl
    from harness.registry import get
    from harness.ui import progress

    cfg = ctx.cfg
    strategy = get("strategies", cfg.strategy)()
    o = strategy.options(cfg)
    src = ctx.upstream("sample") / "responses.jsonl"
    rows = read_jsonl(src)
    if not rows:
        raise HarnessError("no sampled responses", src)
    keys = [(r["lang"], r["id"]) for r in rows]
    out = JsonlAppender(ctx.out / "judgements.jsonl")
    todo = out.pending_chunks(keys, cfg.reward.chunk, lambda r: (r["lang"], r["id"]))
    if todo:
        backend, model = strategy.judge_model(cfg, ctx.policy)
        with load_backend(backend, model, threads=cfg.backend.threads, **cfg.backend.options) as be, \
                progress() as bar:
            task = bar.add_task(f"iter {ctx.iteration} judge", total=len(rows),
                                completed=len(rows) - sum(map(len, todo)))
            for positions in todo:
                chunk = [rows[j] for j in positions]
                prompts, seeds = [], []
                for r in chunk:
                    for i, x in enumerate(r["responses"]):
                        prompts.append(be.format_prompt(JUDGE_PROMPT.format(prompt=r["prompt"], response=x["text"])))
                        seeds.append(derive_seed(cfg.seed, ctx.iteration, "judge", r["lang"], r["id"], i))
                outs = iter(be.generate(prompts, n=o["judge_samples"], temperature=float(o["judge_temperature"]),
                                        top_p=float(o["judge_top_p"]), max_tokens=o["judge_max_tokens"],
                                        seeds=seeds))
                out.append({"lang": r["lang"], "id": r["id"],
                            "judgements": [[c.text for c in next(outs)] for _ in r["responses"]]} for r in chunk)
                bar.advance(task, len(chunk))
    out.close()
    judged = {(r["lang"], r["id"]): r["judgements"] for r in out.rows}
    scored = []
    for r in rows:
        responses = []
        for x, texts in zip(r["responses"], judged[(r["lang"], r["id"])]):
            scores = [parse_score(t) for t in texts]
            valid = [s for s in scores if s is not None]
            responses.append({**x, "judgements": texts, "scores": scores,
                              "score": sum(valid) / len(valid) if valid else None})
        scored.append({**r, "responses": responses})
    atomic_write_jsonl(ctx.out / "scores.jsonl", scored)
    flat = [x for r in scored for x in r["responses"]]
    return {"responses": len(flat), "judgements": sum(len(x["judgements"]) for x in flat),
            "unparsed_judgements": sum(s is None for x in flat for s in x["scores"]),
            "unscored_responses": sum(x["score"] is None for x in flat)}


def score_pairs(ctx) -> dict:
    """pairs.jsonl: per prompt, the highest- vs the lowest-scored response; ties and unscored prompts dropped."""
    from harness.io import atomic_write_json, atomic_write_jsonl, read_jsonl
    from harness.registry import get

    cfg = ctx.cfg
    src = ctx.upstream("judge") / "scores.jsonl"
    rows = read_jsonl(src)
    pairs, summary = [], {}
    for lang in get("strategies", cfg.strategy)().pair_languages(cfg.languages):
        lp, ties, unscored = [], 0, 0
        for r in (r for r in rows if r["lang"] == lang):
            valid = [(i, x) for i, x in enumerate(r["responses"]) if x["score"] is not None]
            if len(valid) < 2:
                unscored += 1
                continue
            best = max(valid, key=lambda t: t[1]["score"])  # max/min keep the first on ties
            worst = min(valid, key=lambda t: t[1]["score"])
            if best[1]["score"] == worst[1]["score"]:
                ties += 1
                continue
            (c, yc), (w, yw) = best, worst
            lp.append({"lang": lang, "id": r["id"], "prompt": r["prompt"], "chosen": yc["text"],
                       "rejected": yw["text"], "chosen_score": yc["score"], "rejected_score": yw["score"],
                       "chosen_index": c, "rejected_index": w, "chosen_length": len(yc["text"]),
                       "rejected_length": len(yw["text"])})
        pairs += lp
        n = len(lp) or 1
        summary[lang] = {"pairs": len(lp), "ties_dropped": ties, "unscored_dropped": unscored,
                         "length_unit": "chars",
                         "mean_chosen_length": sum(p["chosen_length"] for p in lp) / n,
                         "mean_rejected_length": sum(p["rejected_length"] for p in lp) / n,
                         "mean_score_margin": sum(p["chosen_score"] - p["rejected_score"] for p in lp) / n}
    if not pairs:
        counts = ", ".join(f"{k}: {v['ties_dropped']} ties, {v['unscored_dropped']} unscored"
                           for k, v in summary.items())
        raise HarnessError(f"no self-rewarding pairs: every prompt's responses tied or went unscored ({counts})", src)
    atomic_write_jsonl(ctx.out / "pairs.jsonl", pairs)
    atomic_write_json(ctx.out / "summary.json", summary)
    return {"pairs": len(pairs), "ties_dropped": sum(s["ties_dropped"] for s in summary.values()),
            "unscored_dropped": sum(s["unscored_dropped"] for s in summary.values())}
