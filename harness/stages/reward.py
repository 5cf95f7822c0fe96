"""Reward: the implicit reward r = S_{pi_t}(x_c, y) - S_{ref}(x_c, y) for every sampled response.

x_c is the strategy's reward instruction in the chat template (cross_lingual: the English instruction, with the
"answer in {Language}" prefix for non-English). S is the sum of the response tokens' log-probs plus end-of-turn
(``code_exact``: the authors' shifted mask, which drops the first response token). Each S is rounded to
``round_decimals`` before the difference, as the authors' code does.

Passes, each resumable per chunk and written as JSONL: translations (translate_en only, greedy with the policy),
policy log-probs, reference log-probs. Then rewards.jsonl, one row per (language, prompt id):
``{lang, id, prompt, prompt_en, reward_instruction, responses: [{text, n_tokens, finished, policy_logp, ref_logp,
reward, scored_tokens[, translation]}]}``.
"""

from __future__ import annotations

import math

from harness.backends import load_backend
from harness.errors import HarnessError
from harness.io import JsonlAppender, atomic_write_jsonl, read_jsonl
from harness.registry import get
from harness.stages import StageContext
from harness.strategies import TRANS_PRIMER, TranslateToEnglish, extract_translation
from harness.ui import progress


def _sum(lps: list[float], mode: str) -> tuple[float, int]:
    if mode == "code_exact":
        lps = lps[1:]  # the authors' mask shift: the first response token is not counted, end-of-turn is
    return float(sum(lps)), len(lps)


def run(ctx: StageContext) -> dict:
    cfg, rc = ctx.cfg, ctx.cfg.reward
    strategy = get("strategies", cfg.strategy)()
    samples_path = ctx.upstream("sample") / "responses.jsonl"
    rows = read_jsonl(samples_path)
    if not rows:
        raise HarnessError("no sampled responses", samples_path)
    for i, r in enumerate(rows, start=1):
        if not r.get("responses"):
            raise HarnessError(f"empty response set for {r.get('lang')}/{r.get('id')}", samples_path, i)
    opts = dict(threads=cfg.backend.threads, dtype=rc.dtype, **cfg.backend.options)

    keys = [(r["lang"], r["id"]) for r in rows]

    def key_of(r: dict) -> tuple[str, str]:
        return r["lang"], r["id"]

    def translations() -> dict:
        """The policy's English self-translations (translate_en), as written by the translation pass."""
        if not strategy.translate:
            return {}
        return {key_of(r): r["translations"] for r in read_jsonl(ctx.out / "translations.jsonl")}

    def score_jobs(todo: list[list[int]]) -> list[tuple[list[int], list[str], list[str]]]:
        """(row positions, reward instructions, scored texts) per chunk; the instructions are not yet formatted."""
        scored_texts = translations()
        jobs = []
        for positions in todo:
            instrs, texts = [], []
            for r in (rows[j] for j in positions):
                instr = strategy.reward_instruction(r["lang"], r["prompt"], r["prompt_en"])
                scored = scored_texts[key_of(r)] if strategy.translate else [x["text"] for x in r["responses"]]
                instrs += [instr] * len(scored)
                texts += scored
            jobs.append((positions, instrs, texts))
        return jobs

    def record(scores: JsonlAppender, model, name: str, positions: list[int], per_token: list) -> None:
        """One chunk's summed log-probs, checked finite, appended."""
        lps = iter(per_token)
        new = []
        for j in positions:
            r = rows[j]
            sums = [_sum(next(lps), rc.logprob_mode) for _ in r["responses"]]
            for k, (v, _) in enumerate(sums):
                if not math.isfinite(v):
                    raise HarnessError(f"{name} model {model.name} gave a log-prob of {v} for response {k} of "
                                       f"{r['lang']}/{r['id']}", samples_path, j + 1)
            new.append({"lang": r["lang"], "id": r["id"], "logps": [s for s, _ in sums],
                        "scored_tokens": [n for _, n in sums]})
        scores.append(new)

    def passes(model, name: str, translate: bool) -> None:
        """Resumable passes with one loaded model: translate (translate_en, policy only), then score."""
        trans = JsonlAppender(ctx.out / "translations.jsonl") if translate else None
        scores = JsonlAppender(ctx.out / f"{name}_logps.jsonl")
        t_todo = trans.pending_chunks(keys, rc.chunk, key_of) if trans else []
        s_todo = scores.pending_chunks(keys, rc.chunk, key_of)
        if s_todo and not t_todo and cfg.backend.replicas > 1:  # data parallel (harness.replicas)
            from harness.replicas import score_chunks

            jobs = score_jobs(s_todo)
            with progress() as bar:
                t = bar.add_task(f"iter {ctx.iteration} score {name} ({cfg.backend.replicas} replicas)",
                                 total=sum(map(len, s_todo)))
                for i, lps in score_chunks(cfg.backend.score, model, dict(dtype=rc.dtype, **cfg.backend.options),
                                           cfg.backend.replicas, cfg.backend.threads,
                                           [(instrs, texts) for _, instrs, texts in jobs], on=cfg.backend.replicas_on):
                    record(scores, model, name, jobs[i][0], lps)
                    bar.advance(t, len(jobs[i][0]))
        elif t_todo or s_todo:
            with load_backend(cfg.backend.score, model, **opts) as be, progress() as bar:
                if t_todo:
                    t = bar.add_task(f"iter {ctx.iteration} translate", total=sum(map(len, t_todo)))
                    for positions in t_todo:
                        chunk = [rows[j] for j in positions]
                        flat = [x["text"] for r in chunk for x in r["responses"]]
                        prompts = [be.format_prompt(TranslateToEnglish.translation_instruction(y)) + TRANS_PRIMER
                                   for y in flat]
                        outs = be.generate(prompts, n=1, temperature=0.0, top_p=1.0,
                                           max_tokens=rc.translate_max_tokens, seeds=[0] * len(prompts))
                        texts = iter(extract_translation(TRANS_PRIMER + o[0].text) for o in outs)
                        trans.append({"lang": r["lang"], "id": r["id"],
                                      "translations": [next(texts) for _ in r["responses"]]} for r in chunk)
                        bar.advance(t, len(chunk))
                    trans.close()
                if s_todo:
                    t = bar.add_task(f"iter {ctx.iteration} score {name}", total=sum(map(len, s_todo)))
                    for positions, instrs, texts in score_jobs(s_todo):
                        record(scores, model, name, positions, be.score([be.format_prompt(x) for x in instrs], texts))
                        bar.advance(t, len(positions))
        scores.close()
        if trans:
            trans.close()

    passes(ctx.policy, "policy", strategy.translate)
    passes(ctx.reference, "ref", False)

    pol = {(r["lang"], r["id"]): r for r in read_jsonl(ctx.out / "policy_logps.jsonl")}
    ref = {(r["lang"], r["id"]): r for r in read_jsonl(ctx.out / "ref_logps.jsonl")}
    trans = translations()
    out_rows = []
    for i, r in enumerate(rows, start=1):
        key = (r["lang"], r["id"])
        p, q = pol[key], ref[key]
        responses = []
        for j, x in enumerate(r["responses"]):
            sp, sq = p["logps"][j], q["logps"][j]
            for what, v, src in (("policy", sp, "policy_logps.jsonl"), ("reference", sq, "ref_logps.jsonl")):
                if not math.isfinite(v):
                    raise HarnessError(f"{what} log-prob of response {j} for {key[0]}/{key[1]} is {v}",
                                       ctx.out / src, i)
            if rc.round_decimals is not None:
                sp, sq = round(sp, rc.round_decimals), round(sq, rc.round_decimals)
            reward = (sp - sq) * (rc.beta if rc.beta is not None else 1.0)
            resp = dict(x, policy_logp=sp, ref_logp=sq, reward=reward, scored_tokens=p["scored_tokens"][j])
            if strategy.translate:
                resp["translation"] = trans[key][j]
            responses.append(resp)
        instr = strategy.reward_instruction(r["lang"], r["prompt"], r["prompt_en"])
        out_rows.append({"lang": r["lang"], "id": r["id"], "prompt": r["prompt"], "prompt_en": r["prompt_en"],
                         "reward_instruction": instr, "responses": responses})
    atomic_write_jsonl(ctx.out / "rewards.jsonl", out_rows)
    rewards = [x["reward"] for r in out_rows for x in r["responses"]]
    return {"rows": len(out_rows), "responses": len(rewards),
            "mean_reward": sum(rewards) / len(rewards) if rewards else 0.0,
            "translation_errors": sum(1 for r in out_rows for x in r["responses"]
                                      if x.get("translation") == "Translation Error")}
