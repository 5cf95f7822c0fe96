"""Sample: n responses per (language, prompt) from pi_{k-1}, native-language instruction in the chat template
(the strategy's ``sample_languages``: all configured languages, or English only for ``english_only``).

Writes responses.jsonl, one row per (language, prompt id) in prompt order:
``{lang, id, prompt, prompt_en, responses: [{text, n_tokens, finished}]}``. Resumable per chunk of prompts; the
seed of each prompt derives from (run seed, iteration, language, prompt id), so a resumed stage equals an
uninterrupted one.
"""

from __future__ import annotations

from harness.backends import derive_seed, load_backend
from harness.data import load_prompts
from harness.io import JsonlAppender
from harness.registry import get
from harness.stages import StageContext
from harness.ui import progress


def run(ctx: StageContext) -> dict:
    s = ctx.cfg.sample
    return sample_responses(ctx, n=s.n, temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens)


def sample_responses(ctx: StageContext, *, n: int, temperature: float, top_p: float, max_tokens: int,
                     repetition_penalty: float = 1.0) -> dict:
    """responses.jsonl with these decoding settings (strategies that decode otherwise, e.g. LIDR's greedy answers,
    call this with their own)."""
    cfg = ctx.cfg
    languages = get("strategies", cfg.strategy)().sample_languages(cfg.languages)
    prompts = load_prompts(cfg.prompts.source, cfg.languages, cfg.data_dir, cfg.prompts.limit)
    out = JsonlAppender(ctx.out / "responses.jsonl")
    work = [(lang, p) for lang in languages for p in prompts.by_lang[lang]]
    todo = out.pending_chunks([(lang, p.id) for lang, p in work], cfg.sample.chunk, lambda r: (r["lang"], r["id"]))

    def rows_of(chunk, comps):
        return ({"lang": lang, "id": p.id, "prompt": p.prompt, "prompt_en": p.prompt_en,
                 "responses": [{"text": c.text, "n_tokens": c.n_tokens, "finished": c.finished} for c in cs]}
                for (lang, p), cs in zip(chunk, comps))

    def seeds_of(chunk) -> list[int]:
        return [derive_seed(cfg.seed, ctx.iteration, "sample", lang, p.id) for lang, p in chunk]

    decoding = dict(n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens,
                    repetition_penalty=repetition_penalty)
    if todo and cfg.backend.replicas > 1:  # data parallel: chunks spread over engine processes (harness.replicas)
        from harness.replicas import generate_chunks

        chunks = [[work[j] for j in positions] for positions in todo]
        jobs = [([p.prompt for _, p in chunk], dict(decoding, seeds=seeds_of(chunk))) for chunk in chunks]
        with progress() as bar:
            task = bar.add_task(f"iter {ctx.iteration} sample ({cfg.backend.replicas} replicas)", total=len(work),
                                completed=len(work) - sum(map(len, todo)))
            options = dict(cfg.backend.options, dtype=cfg.sample.dtype)
            for i, comps in generate_chunks(cfg.backend.sample, ctx.policy, options, cfg.backend.replicas,
                                            cfg.backend.threads, jobs, on=cfg.backend.replicas_on):
                out.append(rows_of(chunks[i], comps))
                bar.advance(task, len(chunks[i]))
        todo = []
    if todo:
        with load_backend(cfg.backend.sample, ctx.policy, threads=cfg.backend.threads, dtype=cfg.sample.dtype,
                          **cfg.backend.options) as be, \
                progress() as bar:
            task = bar.add_task(f"iter {ctx.iteration} sample", total=len(work),
                                completed=len(work) - sum(map(len, todo)))
            for positions in todo:
                chunk = [work[j] for j in positions]
                comps = be.generate([be.format_prompt(p.prompt) for _, p in chunk], **decoding,
                                    seeds=seeds_of(chunk))
                out.append(rows_of(chunk, comps))
                bar.advance(task, len(chunk))
    out.close()
    rows = out.rows
    # keep the file in canonical order (languages as configured, prompts in file order) whatever the resume history
    order = {(lang, p.id): i for i, (lang, p) in enumerate((lang, p) for lang in languages
                                                           for p in prompts.by_lang[lang])}
    rows.sort(key=lambda r: order[(r["lang"], r["id"])])
    from harness.io import atomic_write_jsonl

    atomic_write_jsonl(ctx.out / "responses.jsonl", rows)
    resp = [x for r in rows for x in r["responses"]]
    return {"prompts": len(rows), "responses": len(resp), "replicas": cfg.backend.replicas,
            "empty_responses": sum(1 for x in resp if not x["text"]),
            "truncated_responses": sum(1 for x in resp if not x["finished"]),
            "generated_tokens": sum(x["n_tokens"] for x in resp)}
